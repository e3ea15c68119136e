"""The ``anytime`` command. Each concern registers its own subcommands; heavy imports happen in handlers."""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> it defines add_parsers(subparsers); handlers are set with parser.set_defaults(func=...)
COMMAND_MODULES = [
    "anytime.demo",  # demo
    "anytime.model.cli",  # info
    "anytime.data.cli",  # data synth
    "anytime.train.cli",  # train
    "anytime.eval.cli",  # eval
    "anytime.export.cli",  # export
    "anytime.search.cli",  # search, draw
    "anytime.serving.cli",  # triton, serve, profile
    "anytime.clients.cli",  # detect, loadgen
]


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit status 2, no traceback."""


# (module, name) of the other errors that are the user's mistake: printed like UserError. Looked up only in modules
# already imported: an error whose module was never imported cannot have been raised, and importing them here would
# put torch (the checkpoint, the dataset) into every command, ``anytime serve`` and ``anytime detect`` included.
USER_ERRORS = [
    ("anytime.config", "ConfigError"),
    ("anytime.model.spec", "ArchitectureError"),
    ("anytime.data.coco", "DatasetError"),
    ("anytime.train.checkpoint", "CheckpointError"),
]


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types ``main`` prints as one line with exit status 2 instead of a traceback."""
    loaded = (getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
    return (UserError, FileNotFoundError, *loaded)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytime", description="Anytime object detection: train, export, serve under deadlines.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):  # that concern is not built yet
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_error_types() as e:  # evaluated only once something was raised
        print(f"anytime {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run as ``python -m anytime.cli``: use the importable module so handlers' UserError is the one caught.
    from anytime.cli import main as _main

    sys.exit(_main())
