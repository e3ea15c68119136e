"""``anytime data ...``: dataset utilities (currently: generate the synthetic benchmark)."""

from __future__ import annotations

import argparse

from anytime.data import DEFAULT_DATA_DIR


def add_parsers(subparsers) -> None:
    data = subparsers.add_parser("data", help="dataset utilities")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    synth = sub.add_parser(
        "synth", help="generate the synthetic shapes-and-patterns benchmark (COCO format)",
        description="Write a deterministic COCO-format detection set: DIR/{train,val}/*.png and "
                    "DIR/annotations/instances_{train,val}.json.")
    synth.add_argument("--out", type=str, default=str(DEFAULT_DATA_DIR), metavar="DIR",
                       help=f"output directory (default: {DEFAULT_DATA_DIR})")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train", type=int, default=4000, metavar="N", help="training images (default: 4000)")
    synth.add_argument("--val", type=int, default=500, metavar="N", help="validation images (default: 500)")
    synth.add_argument("--image-size", type=int, default=256, metavar="PX",
                       help="nominal image side; each image's sides vary by +-12.5%% (default: 256)")
    synth.add_argument("--classes", type=int, default=10, metavar="K", help="number of classes (default: 10)")
    synth.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    synth.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from anytime.cli import UserError
    from anytime.data import synth

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} exists and is not a directory")
    try:
        synth.SynthConfig(args.seed, args.train, args.val, args.image_size, args.classes).validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    out = synth.generate(args.out, seed=args.seed, num_train=args.train, num_val=args.val,
                         image_size=args.image_size, num_classes=args.classes, progress=not args.no_progress)
    print(f"wrote {args.train} train + {args.val} val images, {args.classes} classes, to {out}")
    return 0
