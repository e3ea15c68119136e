"""The PPO machinery on a synthetic reward over the real search space, with a known optimum and no training:
over 5 seeds PPO finds a near-optimal architecture within a fixed number of samples, and random search with
the same number of samples does not come close.

The reward: how well each merging cell matches the same cell of the paper's discovered architecture, in terms
of what the cell *computes on* — the levels of its two input features and whether they are pyramid inputs or
cell outputs — plus its output level and op; the mean over cells, 1.0 for NAS-FPN itself (the optimum). It is
not a function the encoding makes trivial: an input decision is a node index, and which level that node has is
decided by earlier cells' level decisions, so the value of a decision depends on others made before it
(``test_the_reward_couples_decisions``). A uniform architecture scores about 0.29.

The PPO settings here are a faster schedule than the search's defaults (``anytime.search.ppo``), so that the
test runs in seconds: learning rate 0.005, 32 architectures per update, 4 epochs, entropy weight 0.001 (the
paper-sourced defaults also get there, in more samples: reported in the README).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from anytime.model.spec import PyramidSpec
from anytime.search.agents import PPOAgent, RandomAgent
from anytime.search.loop import SearchLoop
from anytime.search.ppo import PPOConfig
from anytime.search.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACE = SearchSpace()
TARGET = PyramidSpec.load("nasfpn")
SAMPLES = 1000
FAST = PPOConfig(lr=0.005, batch=32, epochs=4, entropy_weight=0.001, staleness=0)


def _cells(spec: PyramidSpec) -> list[tuple]:
    levels, n_in = spec.node_levels(), len(spec.levels)
    return [(collections.Counter((levels[x], x >= n_in) for x in c.inputs), c.level, c.op) for c in spec.cells]


_TARGET_CELLS = _cells(TARGET)


def reward(decisions) -> float:
    score = 0.0
    for (inputs, level, op), (t_inputs, t_level, t_op) in zip(_cells(SPACE.decode(decisions)), _TARGET_CELLS):
        score += sum((inputs & t_inputs).values()) + (level == t_level) + (op == t_op)
    return score / (4 * len(_TARGET_CELLS))


def search(agent, samples: int) -> list[float]:
    """Rewards in step order, through the real search loop (fixed batches, staleness 1, duplicate reuse)."""
    loop = SearchLoop(SPACE, agent, samples, batch=FAST.batch, staleness=FAST.staleness)
    loop.start()
    while not loop.done():
        trial = loop.next_to_run()
        loop.mark_running(trial.step)
        loop.finish(trial.step, {"status": "ok", "reward": reward(trial.decisions)})
    return [t.reward for t in loop.trials]


def test_the_optimum_and_a_uniform_architecture():
    assert reward(SPACE.encode(TARGET)) == 1.0
    rng = np.random.default_rng(0)
    assert np.mean([reward(SPACE.sample_uniform(rng)) for _ in range(500)]) == pytest.approx(0.29, abs=0.03)


def test_the_reward_couples_decisions():
    """Not additively separable over decisions: the effect of cell 6 taking node 5 as an input depends on the
    level cell 5 chose, so no per-decision score can represent it."""
    d = list(SPACE.encode(TARGET))

    def r(level_of_cell5: int, second_input_of_cell6: int) -> float:
        x = list(d)
        x[2], x[5] = level_of_cell5, second_input_of_cell6
        return reward(x)

    assert r(1, 5) - r(2, 5) != r(1, 2) - r(2, 2)


def test_ppo_finds_a_near_optimal_architecture_and_beats_random_search():
    ppo_best, ppo_when, random_best = [], [], []
    for seed in range(5):
        rewards = search(PPOAgent(SPACE, seed, ppo=FAST), SAMPLES)
        ppo_best.append(max(rewards))
        ppo_when.append(next((i for i, r in enumerate(rewards) if r >= 0.95), None))
        random_best.append(max(search(RandomAgent(SPACE, seed), SAMPLES)))
    # The controller's trajectory follows torch's last bits, which differ between CPUs (on an AMD EPYC one seed of
    # five ended at 0.89 where an Intel Xeon reached 0.95 on all): four of five near the optimum, none near random.
    assert sum(b >= 0.95 for b in ppo_best) >= 4 and min(ppo_best) >= 0.85, (ppo_best, ppo_when)
    assert max(random_best) < 0.8, random_best
    assert np.mean(ppo_best) - np.mean(random_best) > 0.25, (ppo_best, random_best)
