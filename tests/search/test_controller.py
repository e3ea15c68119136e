"""The LSTM controller: legal samples only, deterministic under a seed, the same numbers sampling and re-scoring."""

from __future__ import annotations

import copy

import pytest
import torch

from anytime.search.agents import PPOAgent, RandomAgent
from anytime.search.controller import Controller
from anytime.search.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("space", [SearchSpace(), SearchSpace(num_cells=6, levels=(3, 4, 5, 6))])
def test_samples_are_always_legal(space):
    torch.manual_seed(0)
    controller = Controller(space)
    with torch.no_grad():  # sharpen the policy so that masked choices would be likely if masks leaked
        for p in controller.parameters():
            p.mul_(30)
    decisions, logp = controller.sample(200, torch.Generator().manual_seed(0))
    for d in decisions.tolist():
        space.decode(d)  # raises on any illegal decision
    assert torch.isfinite(logp).all()


def test_the_same_seed_gives_the_same_architectures():
    space = SearchSpace()
    a, b, c = PPOAgent(space, seed=3), PPOAgent(space, seed=3), PPOAgent(space, seed=4)
    pa, pb, pc = a.propose(16), b.propose(16), c.propose(16)
    assert [d for d, _ in pa] == [d for d, _ in pb]
    assert [p for _, p in pa] == pytest.approx([p for _, p in pb], abs=1e-6)
    assert [d for d, _ in pa] != [d for d, _ in pc]
    ra, rb = RandomAgent(space, 3).propose(16), RandomAgent(space, 3).propose(16)
    assert [d for d, _ in ra] == [d for d, _ in rb]


def test_rescoring_matches_sampling_and_entropy_is_sane():
    space = SearchSpace()
    torch.manual_seed(0)
    controller = Controller(space)
    decisions, logp = controller.sample(32, torch.Generator().manual_seed(1))
    again, entropy = controller.evaluate(decisions)
    assert torch.allclose(again, logp, atol=1e-4)
    # The entropy of a near-uniform initial policy is close to that of uniform choices over the legal options.
    uniform = 0.0
    produced = 0
    for cell in range(space.num_cells):
        n = space.candidates(cell)
        levels = (space.num_levels - produced) if space.is_output(cell) else space.num_levels - 1
        produced += space.is_output(cell)
        uniform += torch.log(torch.tensor([n, n - 1, levels, 2.0])).sum()
    assert float(entropy.mean().detach()) == pytest.approx(float(uniform), rel=0.05)
    # Gradients reach every parameter (attention, both classifiers, the embeddings).
    (-again.mean() - entropy.mean()).backward()
    missing = [n for n, p in controller.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_agent_state_round_trip_continues_exactly():
    space = SearchSpace()
    agent = PPOAgent(space, seed=0)
    batch = [(d, p, float(i % 3)) for i, (d, p) in enumerate(agent.propose(8))]
    agent.learn(batch)
    saved = copy.deepcopy(agent.state_dict())
    expected = agent.propose(4)
    agent.learn([(d, p, 1.0) for d, p in expected])
    after = agent.propose(4)

    other = PPOAgent(space, seed=99)
    other.load_state_dict(saved)
    assert other.propose(4) == expected
    other.learn([(d, p, 1.0) for d, p in expected])
    assert [d for d, _ in other.propose(4)] == [d for d, _ in after]

    rnd = RandomAgent(space, 5)
    rnd.propose(3)
    state = copy.deepcopy(rnd.state_dict())
    nxt = rnd.propose(2)
    fresh = RandomAgent(space, 0)
    fresh.load_state_dict(state)
    assert fresh.propose(2) == nxt
