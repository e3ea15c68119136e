"""``anytime info``: what each exit costs, for a preset or a config file."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters and multiply-adds per exit for a configuration",
                       description="Print, per exit, the parameters and multiply-adds (GMACs) that running up to that "
                                   "exit needs (backbone + first k pyramid networks + head k), what reaching it costs when every exit on "
                                   "the way gives its detections too (heads 1..k, as progressive execution does), "
                                   "and the totals.")
    p.add_argument("config", nargs="?", default=None,
                   help="preset name (see --list) or a JSON config file; default: the default CPU configuration")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument("--image-size", type=int, help="square input size in pixels")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--backbone", help="resnet10/18/34/50/101 or mobilenet_v2")
    p.add_argument("--repeats", type=int, help="number of stacked pyramid networks (= exits)")
    p.add_argument("--width", type=int, help="pyramid and head channels")
    p.add_argument("--pyramid", help="architecture: nasfpn, nasfpn-lite, fpn, or a JSON file")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=run)


def run(args) -> int:
    from anytime.config import PRESETS, load_model_config
    from anytime.model.complexity import exit_costs

    if args.list:
        for name, values in PRESETS.items():
            print(f"{name:26s} {values}")
        print(f"{'default':26s} anytime/configs/default.json")
        return 0
    cfg = load_model_config(args.config).replace(
        image_size=args.image_size, num_classes=args.num_classes, backbone=args.backbone,
        repeats=args.repeats, width=args.width, pyramid=args.pyramid)
    info = exit_costs(cfg)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"]
    print(f"{c['backbone']} + {c['pyramid']} {c['repeats']} @ {c['width']}, {c['num_classes']} classes, "
          f"{c['image_size']}x{c['image_size']} input")
    print(f"{'exit':>4}  {'params (M)':>10}  {'GMACs':>9}  {'GMACs with every exit on the way':>33}")
    for e in info["exits"]:
        print(f"{e['exit']:>4}  {e['params'] / 1e6:>10.2f}  {e['gmacs']:>9.2f}  "
              f"{e['gmacs_every_exit']:>24.2f} ({e['gmacs_every_exit'] / e['gmacs']:.2f}x)")
    print(f"total parameters: {info['params_total'] / 1e6:.2f} M; all exits together: {info['gmacs_all_exits']:.2f} GMACs")
    return 0
