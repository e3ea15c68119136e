"""Pyramid-network architectures as plain data.

A pyramid network is a list of merging cells (NAS-FPN paper §3.1). Nodes 0..L-1 are the pyramid's inputs,
one per level in ascending level order (P3..P7 by default); every cell appends one new node. Cells marked
``output`` produce the pyramid's outputs, exactly one per level. The search module emits these specs and
training consumes them, so they round-trip through JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anytime.files import read_json

BINARY_OPS = ("sum", "global_pool")
ARCH_DIR = Path(__file__).parent / "archs"


class ArchitectureError(ValueError):
    """An architecture spec that cannot be built; the message names the offending cell."""


@dataclass(frozen=True)
class CellSpec:
    level: int  # output level of the cell (3 = stride 8)
    op: str  # one of BINARY_OPS
    inputs: tuple[int, int]  # node indices; both must exist before this cell
    output: bool = False  # whether the cell produces the pyramid output of its level


@dataclass(frozen=True)
class PyramidSpec:
    name: str
    levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    cells: tuple[CellSpec, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(int(x) for x in self.levels))
        object.__setattr__(
            self, "cells", tuple(c if isinstance(c, CellSpec) else _cell_from_dict(c) for c in self.cells)
        )
        self.validate()

    # -- derived facts -------------------------------------------------------------------------------
    def node_levels(self) -> list[int]:
        """Level of every node: the inputs first, then one per cell."""
        return list(self.levels) + [c.level for c in self.cells]

    def validate(self) -> None:
        levels = list(self.levels)
        if sorted(levels) != levels or len(set(levels)) != len(levels):
            raise ArchitectureError(f"{self.name}: levels must be distinct and ascending, got {levels}")
        if not self.cells:
            raise ArchitectureError(f"{self.name}: a pyramid network needs at least one merging cell")
        outputs = []
        for i, cell in enumerate(self.cells):
            node = len(levels) + i
            where = f"{self.name}: cell {i} (node {node})"
            if cell.op not in BINARY_OPS:
                raise ArchitectureError(f"{where}: unknown binary op {cell.op!r}; choose from {BINARY_OPS}")
            if cell.level not in levels:
                raise ArchitectureError(f"{where}: output level P{cell.level} is not one of the pyramid levels {levels}")
            if len(cell.inputs) != 2:
                raise ArchitectureError(f"{where}: a merging cell takes exactly two inputs, got {list(cell.inputs)}")
            a, b = cell.inputs
            for x in (a, b):
                if not isinstance(x, int) or x < 0 or x >= node:
                    raise ArchitectureError(
                        f"{where}: input index {x} does not exist yet (nodes 0..{node - 1} are available)"
                    )
            if a == b:
                raise ArchitectureError(f"{where}: the two inputs must differ (chosen without replacement), got {a} twice")
            if cell.output:
                outputs.append(cell.level)
        if sorted(outputs) != levels:
            raise ArchitectureError(
                f"{self.name}: output cells must produce every level {levels} exactly once, got {sorted(outputs)}"
            )

    # -- JSON --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "levels": list(self.levels),
            "cells": [{**asdict(c), "inputs": list(c.inputs)} for c in self.cells],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "PyramidSpec":
        try:
            return cls(name=d.get("name", "custom"), levels=tuple(d.get("levels", (3, 4, 5, 6, 7))), cells=tuple(d["cells"]))
        except KeyError as e:
            raise ArchitectureError(f"architecture is missing key {e}") from None

    @classmethod
    def load(cls, name_or_path: str | Path) -> "PyramidSpec":
        """A built-in architecture by name (see ``builtin_architectures()``) or a JSON file."""
        path = Path(name_or_path)
        if not path.suffix and (ARCH_DIR / f"{name_or_path}.json").exists():
            path = ARCH_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise ArchitectureError(
                f"unknown architecture {str(name_or_path)!r}: not a built-in ({', '.join(builtin_architectures())}) "
                "and no such file"
            )
        return cls.from_dict(read_json(path, ArchitectureError))


def _cell_from_dict(d: dict) -> CellSpec:
    try:
        return CellSpec(level=int(d["level"]), op=str(d["op"]), inputs=tuple(d["inputs"]), output=bool(d.get("output", False)))
    except (KeyError, TypeError) as e:
        raise ArchitectureError(f"malformed cell {d!r}: {e}") from None


def builtin_architectures() -> list[str]:
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))
