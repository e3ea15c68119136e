"""Package attributes that load on first use (PEP 562).

Why: the ``anytime`` command imports every concern's ``cli`` module to build its parser, and importing
``anytime.model.cli`` runs ``anytime/model/__init__.py`` first. A package ``__init__`` that re-exported its
torch-backed names eagerly would put torch (seconds to import, hundreds of MB resident) into ``anytime --help``,
``anytime serve`` and ``anytime detect``; re-exported through ``lazy_exports``, the names stay where they were and
only the code that reads one imports what defines it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``'s ``__init__``: ``names`` maps each attribute to the module that
    defines it, imported the first time the attribute is read (``from package import name`` included)."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)  # later reads find it without coming here
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
