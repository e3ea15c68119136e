"""``anytime data ...``: dataset utilities: the synthetic benchmark, and a photo mix made from it."""

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

    photos = sub.add_parser(
        "photos", help="a realistic image mix for serving benchmarks (val images as 300-1000 px JPEG and PNG)",
        description="Write the val split of a COCO-format set again as users send images: long side 300-1000 px, "
                    "half JPEG q85-95, half PNG, plus the photos pinned packages ship; COCO format, boxes scaled.")
    photos.add_argument("--data", type=str, default=str(DEFAULT_DATA_DIR), help="source set (default: %(default)s)")
    photos.add_argument("--out", type=str, default="data/photos", metavar="DIR", help="(default: %(default)s)")
    photos.add_argument("--count", type=int, default=400,  # anytime.data.photos.PHOTO_COUNT
                        help="val images to take (default: %(default)s)")
    photos.add_argument("--min-side", type=int, default=300)
    photos.add_argument("--max-side", type=int, default=1000)
    photos.add_argument("--seed", type=int, default=0)
    photos.set_defaults(func=_photos)


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


def _photos(args: argparse.Namespace) -> int:
    from anytime.cli import UserError
    from anytime.data import photos
    from anytime.data.synth import ensure_default

    if not 0 < args.min_side <= args.max_side or args.count < 1:
        raise UserError("need --count >= 1 and 0 < --min-side <= --max-side")
    if args.data == str(DEFAULT_DATA_DIR):
        ensure_default(args.data)
    out = photos.build(args.data, args.out, count=args.count, min_side=args.min_side, max_side=args.max_side,
                       seed=args.seed, progress=True)
    print(f"wrote the photo mix to {out}")
    return 0
