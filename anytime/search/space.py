"""The NAS-FPN search space (paper §3.1, §4.1) as a sequence of softmax decisions, and its exact encoding.

A pyramid network of N merging cells is 4N decisions, four per cell, in the paper's order:

1. the first input: a node index among the candidates (the L pyramid inputs, then one node per earlier cell);
2. the second input: a node index among the same candidates *without replacement* (never the first input);
3. the output level, as an index into ``levels``;
4. the binary op, as an index into ``BINARY_OPS`` (sum, global pooling).

The new feature is appended to the candidates. Intermediate cells (all but the last L) never take the lowest
level (stride 8, "to reduce computation", §3.1). The last L cells are the outputs: their level decisions are
restricted to the levels not yet produced, so together they produce every level once, in an order the
controller predicts. Features no output uses are summed into the output of their level by the model
(``anytime.model.pyramid``), not by the encoding.

The paper says the output cells repeat "steps 1, 2, 4" with the order of output levels predicted by the
controller; we keep step 3 for output cells as a masked softmax over the remaining levels, which is that
prediction made at the cell it concerns. Every decision sequence that obeys these masks decodes to a valid
``PyramidSpec`` and every spec of this shape encodes to exactly one sequence: ``encode(decode(d)) == d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from anytime.model.spec import BINARY_OPS, ArchitectureError, CellSpec, PyramidSpec

DECISIONS_PER_CELL = 4
STEP_KINDS = ("input1", "input2", "level", "op")


@dataclass(frozen=True)
class SearchSpace:
    """N merging cells over the pyramid levels ``levels`` (P3..P7 in the paper, N = 7)."""

    num_cells: int = 7
    levels: tuple[int, ...] = (3, 4, 5, 6, 7)

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(int(x) for x in self.levels))
        if len(self.levels) < 2 or sorted(set(self.levels)) != list(self.levels):
            raise ArchitectureError(f"search space: levels must be at least two distinct ascending levels, got {list(self.levels)}")
        if self.num_cells < len(self.levels):
            raise ArchitectureError(
                f"search space: {self.num_cells} cells cannot produce {len(self.levels)} output levels "
                f"(the last {len(self.levels)} cells are the outputs); use at least {len(self.levels)}")

    # -- shape ---------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def num_decisions(self) -> int:
        return DECISIONS_PER_CELL * self.num_cells

    @property
    def num_ops(self) -> int:
        return len(BINARY_OPS)

    @property
    def max_candidates(self) -> int:
        return self.num_levels + self.num_cells - 1

    def candidates(self, cell: int) -> int:
        """Nodes cell ``cell`` may read: the L inputs and the features of cells 0..cell-1."""
        return self.num_levels + cell

    def is_output(self, cell: int) -> bool:
        return cell >= self.num_cells - self.num_levels

    def intermediate_level_mask(self) -> list[bool]:
        """Level choices of an intermediate cell: every level but the lowest (stride 8)."""
        return [i > 0 for i in range(self.num_levels)]

    def level_mask(self, cell: int, produced: set[int] | frozenset[int]) -> list[bool]:
        """Legal level indices for ``cell``; ``produced`` holds the level indices earlier output cells took."""
        if self.is_output(cell):
            return [i not in produced for i in range(self.num_levels)]
        return self.intermediate_level_mask()

    def size(self) -> int:
        """How many decision sequences (architectures, counting swapped inputs apart) the space holds."""
        n = 1
        for cell in range(self.num_cells):
            c = self.candidates(cell)
            n *= c * (c - 1) * self.num_ops
            if not self.is_output(cell):
                n *= self.num_levels - 1
        return n * math.factorial(self.num_levels)

    # -- decoding and encoding -----------------------------------------------------------------------
    def decode(self, decisions, name: str = "searched") -> PyramidSpec:
        """The architecture of a decision sequence; an illegal decision is an ArchitectureError naming it."""
        decisions = [int(d) for d in decisions]
        if len(decisions) != self.num_decisions:
            raise ArchitectureError(f"expected {self.num_decisions} decisions ({self.num_cells} cells x 4), got {len(decisions)}")
        cells, produced = [], set()
        for cell in range(self.num_cells):
            a, b, level, op = decisions[DECISIONS_PER_CELL * cell: DECISIONS_PER_CELL * (cell + 1)]
            where = f"cell {cell}"
            n = self.candidates(cell)
            if not (0 <= a < n and 0 <= b < n):
                raise ArchitectureError(f"{where}: inputs ({a}, {b}) must be among the {n} candidates 0..{n - 1}")
            if a == b:
                raise ArchitectureError(f"{where}: the second input must differ from the first (without replacement), got {a} twice")
            if not 0 <= level < self.num_levels or not self.level_mask(cell, produced)[level]:
                kind = "output cell" if self.is_output(cell) else "intermediate cell"
                raise ArchitectureError(f"{where}: level index {level} is not a legal choice for an {kind} "
                                        f"(legal: {[i for i, ok in enumerate(self.level_mask(cell, produced)) if ok]})")
            if not 0 <= op < self.num_ops:
                raise ArchitectureError(f"{where}: op index {op} is not one of 0..{self.num_ops - 1} ({', '.join(BINARY_OPS)})")
            if self.is_output(cell):
                produced.add(level)
            cells.append(CellSpec(level=self.levels[level], op=BINARY_OPS[op], inputs=(a, b), output=self.is_output(cell)))
        return PyramidSpec(name=name, levels=self.levels, cells=tuple(cells))

    def encode(self, spec: PyramidSpec) -> tuple[int, ...]:
        """The decision sequence of ``spec``; a spec outside this space is an ArchitectureError saying why."""
        if tuple(spec.levels) != self.levels:
            raise ArchitectureError(f"{spec.name}: levels {list(spec.levels)} differ from the search space's {list(self.levels)}")
        if len(spec.cells) != self.num_cells:
            raise ArchitectureError(f"{spec.name}: {len(spec.cells)} cells, the search space has {self.num_cells}")
        decisions: list[int] = []
        for cell, c in enumerate(spec.cells):
            if c.output != self.is_output(cell):
                raise ArchitectureError(
                    f"{spec.name}: cell {cell} is {'an' if c.output else 'not an'} output, but in this space exactly the "
                    f"last {self.num_levels} cells are the outputs")
            decisions += [c.inputs[0], c.inputs[1], self.levels.index(c.level), BINARY_OPS.index(c.op)]
        self.decode(decisions)  # checks the space's rules (e.g. no P3 in intermediate cells)
        return tuple(decisions)

    # -- sampling ------------------------------------------------------------------------------------
    def sample_uniform(self, rng) -> tuple[int, ...]:
        """Each decision uniform over its legal choices (``rng``: a numpy Generator); the random-search baseline."""
        decisions: list[int] = []
        produced: set[int] = set()
        for cell in range(self.num_cells):
            n = self.candidates(cell)
            a = int(rng.integers(n))
            b = int(rng.integers(n - 1))
            b += b >= a  # uniform over the candidates other than a
            legal = [i for i, ok in enumerate(self.level_mask(cell, produced)) if ok]
            level = legal[int(rng.integers(len(legal)))]
            if self.is_output(cell):
                produced.add(level)
            decisions += [a, b, level, int(rng.integers(self.num_ops))]
        return tuple(decisions)


def canonical(spec: PyramidSpec) -> tuple:
    """A key equal for architectures that compute the same function with the same parameters.

    Swapping the inputs of a ``sum`` cell changes nothing (addition commutes, the cell's weights do not depend
    on the order), nor does swapping those of a ``global_pool`` cell whose inputs lie on different levels (the
    coarser one always gates, ``anytime.model.cells``). Only a global-pool cell with both inputs on one level
    keeps its order.
    """
    levels = spec.node_levels()
    cells = []
    for c in spec.cells:
        a, b = c.inputs
        ordered = c.op == "global_pool" and levels[a] == levels[b]
        cells.append((c.level, c.op, (a, b) if ordered else tuple(sorted((a, b))), c.output))
    return (tuple(spec.levels), tuple(cells))
