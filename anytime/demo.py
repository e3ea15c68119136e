"""``anytime demo``: the README's main job on the embedded default configuration and model.

It grows with the project: today it prints what each exit of the default model costs.
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default model (what the README's first command runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from anytime.model.cli import run as info

    print("== anytime: the default model, exit by exit ==")
    return info(argparse.Namespace(config=None, list=False, image_size=None, num_classes=None, backbone=None,
                                   repeats=None, width=None, pyramid=None, json=False))
