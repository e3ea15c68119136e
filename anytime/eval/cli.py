"""``anytime eval``: COCO AP of every exit of a checkpoint (default: the shipped model on the default benchmark)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("eval", help="COCO AP of every exit of a checkpoint",
                              description="Evaluate every exit of a checkpoint with pycocotools; writes per-exit "
                                          "COCO results JSON and an AP-per-exit plot.")
    p.add_argument("--checkpoint", help="checkpoint file (default: the shipped model anytime/assets/default_model.pt)")
    p.add_argument("--data", help="dataset root (default: data/synth, generated if absent)")
    p.add_argument("--split", default="val", help="dataset split (default: val)")
    p.add_argument("--exits", help="comma-separated exits to evaluate, e.g. 1,2,3 (default: all)")
    p.add_argument("--out", help="output directory (default: <checkpoint dir>/eval_<split>, runs/eval for the shipped model)")
    p.add_argument("--json", action="store_true", help="print only the metrics as JSON on stdout")
    p.add_argument("--sizes", help="comma-separated input sizes in px to evaluate the same weights at, e.g. "
                                   "128,256,384: AP and GMACs for every (size, exit) in one run (default: the "
                                   "model's own size only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)

    p = subparsers.add_parser("scaling", help="AP against pyramids and GMACs for several models (Figure 8a)",
                              description="The paper's Figure 8a in miniature: AP against the number of pyramid "
                                          "networks and against GMACs, one line per model through its exits (the "
                                          "exits of one deeply supervised model; the paper trains one model per "
                                          "depth). Models are checkpoints (evaluated on the val split) or reports "
                                          "of `anytime eval --json`.")
    p.add_argument("models", nargs="+", metavar="CHECKPOINT_OR_EVAL_JSON")
    p.add_argument("--labels", help="comma-separated labels, one per model (default: the pyramid's name)")
    p.add_argument("--data", help="dataset root for checkpoints (default: the default benchmark)")
    p.add_argument("--out", default="runs/scaling.png", help="the figure (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the points as JSON")
    p.set_defaults(func=run_scaling)


def run_scaling(args: argparse.Namespace) -> int:
    from anytime.cli import UserError
    from anytime.config import ConfigError
    from anytime.eval.scaling import model_point_set, per_depth, plot_scaling
    from anytime.train.checkpoint import CheckpointError

    labels = args.labels.split(",") if args.labels else [None] * len(args.models)
    if len(labels) != len(args.models):
        raise UserError(f"--labels gives {len(labels)} labels for {len(args.models)} models")
    models = []
    for source, label in zip(args.models, labels):
        if not Path(source).is_file():
            raise UserError(f"{source} does not exist")
        try:
            models.append(model_point_set(source, args.data, label))
        except (CheckpointError, ConfigError, KeyError, json.JSONDecodeError) as e:
            raise UserError(f"{source}: not a checkpoint or an `anytime eval --json` report ({e})") from None
    path = plot_scaling(models, args.out)
    if args.json:
        print(json.dumps({"models": models, "per_depth": per_depth(models), "figure": str(path)}))
    else:
        for m in models:
            print(f"{m['label']:>16s}: " + "  ".join(f"exit {e['exit']} AP {100 * e['AP']:.1f} @ {e['gmacs']:.2f} GMACs"
                                                     for e in m["exits"]))
        for pyramid, points in per_depth(models).items():
            print(f"{pyramid:>16s}: one model per depth: " + "  ".join(
                f"{p['repeats']} pyramids AP {100 * p['AP']:.1f} ({p['runs']} runs)" for p in points))
        print(f"figure: {path}")
    return 0


def _integers(text: str, flag: str) -> list[int]:
    """The sorted distinct integers of a comma-separated flag value, or a UserError naming the flag."""
    from anytime.cli import UserError

    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None


def parse_exits(text: str | None, num_exits: int) -> list[int] | None:
    from anytime.cli import UserError

    if not text:
        return None
    exits = _integers(text, "--exits")
    bad = [e for e in exits if not 1 <= e <= num_exits]
    if bad or not exits:
        raise UserError(f"--exits {text!r}: this model has exits 1..{num_exits}")
    return exits


def run(args: argparse.Namespace) -> int:
    import torch

    from anytime.cli import UserError
    from anytime.eval.coco_eval import format_table
    from anytime.train.checkpoint import DEFAULT_MODEL

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_MODEL
    if not checkpoint.exists():
        if args.checkpoint:
            raise UserError(f"checkpoint {checkpoint} does not exist")
        raise UserError(f"no --checkpoint given and the shipped default model {DEFAULT_MODEL} is missing; "
                        "train one (anytime train) and pass --checkpoint runs/<name>/final.pt")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(args.out) if args.out else (
        Path("runs/eval") if checkpoint.resolve() == DEFAULT_MODEL else checkpoint.parent / f"eval_{args.split}")

    model, report = evaluate_checkpoint(checkpoint, args.data, args.split, args.exits, device=device,
                                        batch_size=args.batch_size, progress=not args.json, out_dir=out_dir,
                                        num_workers=args.num_workers, sizes=args.sizes)
    # The model's config travels with its AP, so the report alone says what was measured (its pyramid, its
    # exits' GMACs for `anytime scaling`) after the checkpoint, an ignored file, is gone.
    # The shipped model by its place in the package, never this machine's absolute path.
    shown = args.checkpoint or str(DEFAULT_MODEL.relative_to(DEFAULT_MODEL.parents[2]))
    report.update(checkpoint=shown, split=args.split, out_dir=str(out_dir), model=model.cfg.to_dict())
    # With the checkpoint's hash, ``anytime export`` takes each exit's AP from this report into the manifest (and
    # from no report of another model): anytime.export.accuracy.
    from anytime.export.repository import sha256_file

    report["checkpoint_sha256"] = sha256_file(checkpoint)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        print(f"(AP in %, {report['num_images']} images; results and ap_per_exit.png in {out_dir})")
        if "sizes" in report:
            print(format_sizes(report["sizes"]))
    return 0


def parse_sizes(text: str | None, cfg) -> list[int] | None:
    """Sorted input sizes of ``--sizes``, each checked against the model's pyramid (a multiple of its largest
    stride), or None."""
    from anytime.cli import UserError
    from anytime.config import ConfigError

    if not text:
        return None
    sizes = _integers(text, "--sizes")
    if not sizes:
        raise UserError("--sizes names no size")
    for size in sizes:
        try:
            cfg.replace(image_size=size).validate()
        except ConfigError as e:
            raise UserError(f"--sizes {size}: {e}") from None
    return sizes


def evaluate_checkpoint(checkpoint, data: str | None, split: str = "val", exits: str | None = None,
                        device=None, sizes: str | None = None, **options):
    """(model, report) of ``anytime.eval.coco_eval.evaluate`` on a checkpoint, with the CLI's checks (a readable
    checkpoint, valid exits, as many classes as the dataset). Everything but the report goes to stderr
    (pycocotools and the data generator print progress).

    The report's ``exits`` are at the model's own input size (what export puts in the manifest). With ``sizes``,
    ``report["sizes"]`` also holds every (size, exit): its AP and GMACs, the same weights letterboxed to each size
    (``AnytimeRetinaNet.set_image_size``); only the model's own size writes results files and the plot."""
    from anytime.cli import UserError
    from anytime.eval.coco_eval import evaluate
    from anytime.model.complexity import exit_costs
    from anytime.train.checkpoint import CheckpointError, load_model

    with contextlib.redirect_stdout(sys.stderr):
        try:
            model, meta = load_model(checkpoint, map_location=device)
        except CheckpointError as e:
            raise UserError(str(e)) from None
        chosen = parse_exits(exits, model.num_exits)
        chosen_sizes = parse_sizes(sizes, model.cfg)
        native = model.cfg.image_size
        dataset = _open_split(data, split, native)
        cat_ids = meta.get("cat_ids") or list(dataset.cat_ids)
        if len(cat_ids) != model.cfg.num_classes:
            raise UserError(f"the model predicts {model.cfg.num_classes} classes but the dataset has {len(cat_ids)}")
        if list(cat_ids) != list(dataset.cat_ids):
            print("warning: the checkpoint's category ids differ from the dataset's; using the checkpoint's", file=sys.stderr)
        report = evaluate(model, dataset, chosen, cat_ids=cat_ids, **options)
        if chosen_sizes:
            others = {k: v for k, v in options.items() if k != "out_dir"}
            report["sizes"] = []
            try:
                for size in chosen_sizes:
                    model.set_image_size(size)
                    at = report if size == native else evaluate(model, _open_split(data, split, size), chosen,
                                                                cat_ids=cat_ids, **others)
                    gmacs = {e["exit"]: e["gmacs"] for e in exit_costs(model.cfg, every_exit=False)["exits"]}
                    report["sizes"].append({"image_size": size, "exits": [
                        {**{k: v for k, v in row.items() if k != "detections"}, "gmacs": gmacs[row["exit"]]}
                        for row in at["exits"]]})
            finally:
                model.set_image_size(native)
        return model, report


def format_sizes(sizes: list[dict]) -> str:
    """AP (%) and GMACs of every (size, exit), cheapest first: the options' frontier as a table."""
    rows = sorted(((s["image_size"], e) for s in sizes for e in s["exits"]), key=lambda r: r[1]["gmacs"])
    lines = [f"{'size':>6}  {'exit':>4}  {'GMACs':>7}  {'AP':>6}  {'AP50':>6}"]
    lines += [f"{size:>6}  {e['exit']:>4}  {e['gmacs']:>7.3f}  {100 * e['AP']:>6.2f}  {100 * e['AP50']:>6.2f}"
              for size, e in rows]
    return "\n".join(lines)


def _open_split(data: str | None, split: str, image_size: int):
    from anytime.cli import UserError
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.coco import CocoDetection, DatasetError, find_split
    from anytime.data.transforms import eval_transform

    if data is None:
        from anytime.data.synth import ensure_default

        ensure_default(DEFAULT_DATA_DIR)
        data = DEFAULT_DATA_DIR
    if not Path(data).is_dir():
        raise UserError(f"data directory {data} does not exist (make one with `anytime data synth --out {data}`)")
    try:
        image_dir, ann_file = find_split(data, split)
        return CocoDetection(image_dir, ann_file, transform=eval_transform(image_size))
    except (DatasetError, FileNotFoundError) as e:
        raise UserError(f"{data}: {e}") from None
