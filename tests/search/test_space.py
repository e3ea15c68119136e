"""The search space obeys paper §3.1 and encodes the discovered architectures exactly."""

from __future__ import annotations

import numpy as np
import pytest

from anytime.model.spec import ArchitectureError, PyramidSpec
from anytime.search.space import SearchSpace, canonical


def check_rules(space: SearchSpace, spec: PyramidSpec) -> None:
    """Every rule of §3.1, checked on the decoded architecture itself."""
    n_in = len(space.levels)
    assert len(spec.cells) == space.num_cells
    for i, cell in enumerate(spec.cells):
        node = n_in + i
        a, b = cell.inputs
        assert 0 <= a < node and 0 <= b < node and a != b  # candidates so far, without replacement
        if i < space.num_cells - n_in:
            assert not cell.output and cell.level != min(space.levels)  # intermediate: never stride 8
        else:
            assert cell.output
    assert sorted(c.level for c in spec.cells if c.output) == list(space.levels)  # each level exactly once
    assert [c.output for c in spec.cells] == [False] * (space.num_cells - n_in) + [True] * n_in


@pytest.mark.parametrize("space", [SearchSpace(), SearchSpace(num_cells=6, levels=(3, 4, 5, 6)),
                                   SearchSpace(num_cells=5)])
def test_uniform_samples_obey_the_rules_and_round_trip(space):
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(300):
        decisions = space.sample_uniform(rng)
        spec = space.decode(decisions)
        check_rules(space, spec)
        assert space.encode(spec) == decisions
        orders.add(tuple(c.level for c in spec.cells if c.output))
    assert len(orders) > 20  # the output order is a free decision, not fixed


def test_the_discovered_architectures_encode_exactly(tmp_path):
    space = SearchSpace()
    spec = PyramidSpec.load("nasfpn")
    decisions = space.encode(spec)
    assert decisions[:8] == (1, 3, 1, 1, 1, 5, 1, 0)  # cell 5: GP(P4, P6) -> P4; cell 6: sum(P4, node 5) -> P4
    back = space.decode(decisions, name="nasfpn")
    assert back == spec
    path = tmp_path / "arch.json"
    back.to_json(path)
    assert PyramidSpec.load(path) == spec and space.encode(PyramidSpec.load(path)) == decisions
    lite = PyramidSpec.load("nasfpn-lite")
    assert SearchSpace(num_cells=6, levels=(3, 4, 5, 6)).decode(
        SearchSpace(num_cells=6, levels=(3, 4, 5, 6)).encode(lite), name="nasfpn-lite") == lite


@pytest.mark.parametrize("change, message", [
    (lambda d: d.__setitem__(1, d[0]), "differ from the first"),
    (lambda d: d.__setitem__(0, 5), "among the 5 candidates"),
    (lambda d: d.__setitem__(2, 0), "not a legal choice for an intermediate cell"),  # P3 in cell 0
    (lambda d: d.__setitem__(14, d[10]), "not a legal choice for an output cell"),  # a level produced twice
    (lambda d: d.__setitem__(3, 2), "op index 2"),
    (lambda d: d.pop(), "expected 28 decisions"),
])
def test_illegal_decisions_are_named(change, message):
    space = SearchSpace()
    decisions = list(space.encode(PyramidSpec.load("nasfpn")))
    change(decisions)
    with pytest.raises(ArchitectureError, match=message):
        space.decode(decisions)


def test_specs_outside_the_space_are_refused():
    space = SearchSpace()
    spec = PyramidSpec.load("nasfpn")
    with pytest.raises(ArchitectureError, match="cells"):
        SearchSpace(num_cells=8).encode(spec)
    with pytest.raises(ArchitectureError, match="levels"):
        SearchSpace(num_cells=7, levels=(3, 4, 5, 6)).encode(spec)
    d = spec.to_dict()
    d["cells"][0]["level"] = 3  # an intermediate P3 cell is a valid PyramidSpec but not in the search space
    with pytest.raises(ArchitectureError, match="intermediate"):
        space.encode(PyramidSpec.from_dict(d))
    with pytest.raises(ArchitectureError, match="at least 5"):
        SearchSpace(num_cells=4)


def test_size_counts_the_decision_sequences():
    space = SearchSpace(num_cells=2, levels=(3, 4))  # two output cells only
    # cell 0: 2 x 1 input pairs, 2 levels, 2 ops; cell 1: 3 x 2 pairs, the remaining level, 2 ops
    assert space.size() == (2 * 1 * 2 * 2) * (3 * 2 * 1 * 2)
    seen = {space.sample_uniform(np.random.default_rng(s)) for s in range(2000)}
    assert len(seen) == space.size()


def test_canonical_ignores_only_input_orders_that_change_nothing():
    space = SearchSpace()
    d = list(space.encode(PyramidSpec.load("nasfpn")))
    swapped = list(d)
    swapped[4], swapped[5] = d[5], d[4]  # cell 6 is a sum: order-free
    assert canonical(space.decode(swapped)) == canonical(space.decode(d))
    swapped = list(d)
    swapped[0], swapped[1] = d[1], d[0]  # cell 5 is global pooling of P4 and P6: the coarser gates either way
    assert canonical(space.decode(swapped)) == canonical(space.decode(d))
    other = list(d)
    other[7] = 1 - d[7]  # another op
    assert canonical(space.decode(other)) != canonical(space.decode(d))


def test_sampled_architectures_build_and_run():
    import torch

    from anytime.model.pyramid import PyramidNetwork

    space = SearchSpace()
    rng = np.random.default_rng(1)
    for _ in range(3):
        net = PyramidNetwork(space.decode(space.sample_uniform(rng)), channels=8).eval()
        outs = net([torch.randn(1, 8, 16 // 2 ** i, 16 // 2 ** i) for i in range(5)])
        assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
