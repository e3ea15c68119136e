"""``anytime export``: checkpoint -> Triton model repository, every exit checked against PyTorch."""

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
    # 2 instances of 1 thread each, not 1 of the runtime's 2: on the 2-core machine this project serves on, two calls
    # in flight on one thread each met more budgets than one call on two threads in 3 runs of
    # benchmarks/serving_goals.py (e.g. photo mix, 50 % load, budget 3D: 88.1 against 79.6 %) for the same or less CPU
    # per request (benchmarks/cpu_per_request.py); one call alone is slower (exit 4: 9.0 against 7.4 ms)
    p.add_argument("--instances", type=int, default=2, help="model instances per exit (default: %(default)s)")
    p.add_argument("--intra-op-threads", type=int, default=1,
                   help="ONNX Runtime threads per call of an exit model (default: %(default)s; 0: the runtime's own)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--max-stage-batch", type=int, default=8,
                   help="progressive model: requests one stage call may batch (1: no stage batching)")
    p.add_argument("--ap-report", default=None,
                   help="an `anytime eval` report of this checkpoint (report.json): each exit's AP for the manifest "
                        "(default: <checkpoint>.eval.json or <checkpoint dir>/eval_val/report.json when one matches)")
    p.add_argument("--sizes", default=None,
                   help="input sizes to consider as options beside the model's own, e.g. 128,384 (default: the sizes "
                        "its evaluation report has, `anytime eval --sizes`); only the (size, exit) pairs on the "
                        "AP-compute frontier are exported (anytime/options.py)")
    p.add_argument("--no-stages", action="store_true", help="per-exit models only, no progressive model")
    p.set_defaults(func=run_export)


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
    if args.max_stage_batch < 1:
        raise UserError(f"--max-stage-batch must be >= 1, got {args.max_stage_batch}")
    if args.instances < 1 or args.intra_op_threads < 0:
        raise UserError(f"--instances must be >= 1 and --intra-op-threads >= 0, got {args.instances} and "
                        f"{args.intra_op_threads}")
    from anytime.export.accuracy import ReportMismatch

    if args.ap_report and not Path(args.ap_report).is_file():
        raise UserError(f"--ap-report: no such file: {args.ap_report}")
    sizes = None
    if args.sizes:
        try:
            sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
        except ValueError:
            raise UserError(f"--sizes: comma-separated integers, got {args.sizes!r}") from None
    try:
        manifest = export_repository(model, meta, out, backend=args.backend, max_batch_size=args.max_batch_size,
                                     instances=args.instances, intra_op_threads=args.intra_op_threads,
                                     verify=not args.no_verify, stages=not args.no_stages,
                                     max_stage_batch=args.max_stage_batch, ap_report=args.ap_report,
                                     sizes=sizes)
    except (ReportMismatch, ValueError) as e:
        raise UserError(str(e)) from None
    stages = f" and {len(manifest['progressive']['stages'])} stages" if manifest.get("progressive") else ""
    options = len(manifest["options"]) - len(manifest["exits"])
    stages += f", {options} more options at other input sizes" if options else ""
    print(f"wrote {len(manifest['exits'])} exits{stages} to {out}/ ({args.backend} backend); manifest: {out / 'manifest.json'}")
    return 0
