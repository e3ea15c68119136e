"""``anytime export`` (checkpoint -> Triton repository) and ``anytime profile`` (latency per exit)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write every exit as its own ONNX model into a Triton model repository",
                       description="Export exit k (backbone + first k pyramid networks + head k) of a checkpoint as "
                                   "ONNX, check it against PyTorch, and write a Triton repository with a manifest.")
    p.add_argument("--checkpoint", help="checkpoint file (default: the embedded default model)")
    p.add_argument("--out", default=None, help="repository directory (default: model_repository/)")
    p.add_argument("--backend", choices=["python", "onnxruntime"], default="python",
                   help="python: a python-backend model.py running ONNX Runtime (works with PyPI's Triton); "
                        "onnxruntime: Triton's native ORT backend (NGC containers)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--instances", type=int, default=1, help="model instances per exit")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.set_defaults(func=run_export)
    add_profile_parser(sub)


def run_export(args) -> int:
    from anytime.cli import UserError
    from anytime.config import DEFAULT_CHECKPOINT, DEFAULT_REPOSITORY
    from anytime.export.exporter import export_repository
    from anytime.train.checkpoint import CheckpointError, load_model

    ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not ckpt.exists():
        raise UserError(f"checkpoint not found: {ckpt}")
    try:
        model, meta = load_model(ckpt)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    out = Path(args.out) if args.out else DEFAULT_REPOSITORY
    manifest = export_repository(model, meta, out, backend=args.backend, max_batch_size=args.max_batch_size,
                                 instances=args.instances, verify=not args.no_verify)
    print(f"wrote {len(manifest['exits'])} exits to {out}/ ({args.backend} backend); manifest: {out / 'manifest.json'}")
    return 0


def add_profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure each exit's latency through Triton, ONNX Runtime and PyTorch",
                       description="Time every exit at each batch size through a real Triton server (started on the "
                                   "repository unless --triton is given), ONNX Runtime and PyTorch; print a table, "
                                   "save a plot, and write the profile into the repository's manifest.")
    p.add_argument("--repository", type=Path, default=None, help="exported repository (default: model_repository/)")
    p.add_argument("--triton", default=None, help="an already running Triton's gRPC HOST:PORT")
    p.add_argument("--checkpoint", default=None, help="checkpoint for the PyTorch column (default: the manifest's)")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--backends", default="triton,onnxruntime,pytorch")
    p.add_argument("--out", type=Path, default=Path("runs/profile"), help="where the plot and JSON go")
    p.add_argument("--no-write", action="store_true", help="do not store the profile in the manifest")
    p.add_argument("--json", action="store_true", help="print the profile as JSON only")
    p.set_defaults(func=run_profile_cmd)


def run_profile_cmd(args) -> int:
    import json
    import sys

    from anytime.cli import UserError
    from anytime.config import DEFAULT_CHECKPOINT, DEFAULT_REPOSITORY
    from anytime.export.profile import ProfileSettings, format_table, plot, run_profile
    from anytime.export.repository import read_manifest, write_manifest

    repository = args.repository or DEFAULT_REPOSITORY
    if not (repository / "manifest.json").exists():
        raise UserError(f"{repository} has no manifest.json: run `anytime export` first")
    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise UserError(f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}") from None
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = set(backends) - {"triton", "onnxruntime", "pytorch"}
    if unknown or not sizes or min(sizes) < 1 or args.runs < 1:
        raise UserError("choose backends from triton, onnxruntime, pytorch; batch sizes and --runs must be >= 1")
    manifest = read_manifest(repository)
    if max(sizes) > manifest.get("max_batch_size", 8):
        raise UserError(f"batch size {max(sizes)} is above the repository's max_batch_size")
    model = None
    if "pytorch" in backends:
        from anytime.train.checkpoint import load_model

        ckpt = args.checkpoint or manifest.get("checkpoint") or DEFAULT_CHECKPOINT
        if not Path(ckpt).exists():
            raise UserError(f"checkpoint {ckpt} for the PyTorch column not found (pass --checkpoint, or drop pytorch "
                            "from --backends)")
        model, _ = load_model(ckpt)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    profile = run_profile(repository, ProfileSettings(batch_sizes=sizes, runs=args.runs, backends=backends),
                          triton_url=args.triton, model=model, progress=log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(profile, indent=1))
    plot(profile, args.out / "latency.png")
    if not args.no_write:
        manifest = read_manifest(repository)
        manifest["latency_profile"] = profile
        write_manifest(repository, manifest)
    if args.json:
        print(json.dumps(profile))
    else:
        print(format_table(profile))
        print(f"\nplot: {args.out / 'latency.png'}; profile: {args.out / 'profile.json'}"
              + ("" if args.no_write else f"; stored in {repository / 'manifest.json'}"))
    return 0
