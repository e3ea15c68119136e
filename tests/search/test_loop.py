"""The search loop: the same search whatever order trials end in, exact continuation from its state,
duplicates never trained twice, failures recorded as bad rewards. No Ray here: a simulated pool of workers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from anytime.search.agents import PPOAgent, RandomAgent
from anytime.search.loop import SearchLoop
from anytime.search.ppo import PPOConfig
from anytime.search.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACE = SearchSpace()


def reward_of(decisions) -> float:
    """A deterministic stand-in for a trial: a hash of the architecture in [0, 1)."""
    return (hash(tuple(decisions)) % 10007) / 10007


def make_loop(kind: str = "ppo", total: int = 24, space: SearchSpace = SPACE, **kw) -> SearchLoop:
    agent = PPOAgent(space, seed=0, ppo=PPOConfig(batch=4, epochs=2)) if kind == "ppo" else RandomAgent(space, 0)
    loop = SearchLoop(space, agent, total, batch=4, staleness=1, **kw)
    loop.start()
    return loop


def drive(loop: SearchLoop, workers: int, order_seed: int | None, result=None, stop_after: int | None = None) -> list[int]:
    """Run the loop with ``workers`` simulated workers; trials end in an order drawn from ``order_seed``
    (None: in the order they started). Returns the steps that were actually run."""
    rng = np.random.default_rng(order_seed)
    running, ran = [], []
    result = result or (lambda t: {"status": "ok", "reward": reward_of(t.decisions), "seconds": 1.0, "worker": "w"})
    while not loop.done():
        while len(running) < workers:
            trial = loop.next_to_run()
            if trial is None:
                break
            loop.mark_running(trial.step)
            running.append(trial)
            ran.append(trial.step)
        assert running, "the loop stalled"
        trial = running.pop(0 if order_seed is None else int(rng.integers(len(running))))
        loop.finish(trial.step, result(trial))
        if stop_after is not None and len(loop.finished()) >= stop_after:
            break
    return ran


def outcome(loop: SearchLoop) -> list[tuple]:
    return [(t.step, t.decisions, t.status, t.reward) for t in loop.trials[: loop.total]]


@pytest.mark.parametrize("kind", ["ppo", "random"])
def test_completion_order_and_worker_count_do_not_change_the_search(kind):
    reference = make_loop(kind)
    drive(reference, workers=1, order_seed=None)
    assert reference.done() and len(reference.finished()) == 24
    for workers, order in ((2, 0), (3, 1), (5, 2)):
        loop = make_loop(kind)
        drive(loop, workers=workers, order_seed=order)
        assert outcome(loop) == outcome(reference), (workers, order)
    if kind == "ppo":
        assert reference.learned == 6 and len(reference.updates) == 6


def test_staleness_bounds_how_far_ahead_ppo_samples():
    loop = make_loop("ppo", total=40)
    assert len(loop.trials) == 8  # batches 0 and 1 before any reward
    for t in loop.trials[:3]:
        loop.mark_running(t.step)
        loop.finish(t.step, {"status": "ok", "reward": 0.5})
    assert len(loop.trials) == 8 and loop.learned == 0
    loop.finish(3, {"status": "ok", "reward": 0.5})  # batch 0 complete: update 1, then batch 2 is sampled
    assert loop.learned == 1 and len(loop.trials) == 12


def test_resuming_from_the_state_continues_exactly():
    reference = make_loop("ppo", total=28)
    drive(reference, workers=2, order_seed=0)

    first = make_loop("ppo", total=28)
    drive(first, workers=3, order_seed=5, stop_after=11)  # trials are running when it "dies"
    loop_state, agent_state = copy.deepcopy(first.state_dict()), copy.deepcopy(first.agent.state_dict())
    assert any(t["status"] == "queued" for t in loop_state["trials"])

    resumed = SearchLoop(SPACE, PPOAgent(SPACE, seed=0, ppo=PPOConfig(batch=4, epochs=2)), 28, batch=4, staleness=1)
    resumed.agent.load_state_dict(agent_state)
    resumed.load_state_dict(loop_state)
    ran = drive(resumed, workers=2, order_seed=9)
    assert set(ran).isdisjoint(t.step for t in first.finished())  # finished trials are never run again
    assert outcome(resumed) == outcome(reference)


def test_duplicates_are_never_trained_twice():
    space = SearchSpace(num_cells=2, levels=(3, 4))  # 48 decision sequences: duplicates are certain
    loop = make_loop("random", total=60, space=space)
    ran = drive(loop, workers=3, order_seed=0)
    reused = [t for t in loop.trials if t.status == "reused"]
    assert reused and len(ran) + len(reused) == 60
    for t in reused:
        first = loop.trials[t.same_as]
        assert first.status == "ok" and t.reward == first.reward and t.step > first.step
    assert len(ran) == len({t.decisions for t in loop.trials if t.same_as is None})


def test_failures_are_bad_rewards_not_a_dead_search():
    def result(t):
        if t.step % 5 == 1:
            return {"status": "failed", "reward": None, "error": "failed after 3 tries: RuntimeError: boom"}
        if t.step % 5 == 2:
            return {"status": "ok", "reward": math.nan}
        return {"status": "ok", "reward": reward_of(t.decisions)}

    loop = make_loop("ppo", total=16, failure_reward=-1.0)
    drive(loop, workers=2, order_seed=3, result=result)
    assert loop.done() and loop.learned == 4
    failed = [t for t in loop.trials if t.status == "failed"]
    assert {t.step % 5 for t in failed} == {1, 2}
    assert all(t.reward == -1.0 and t.error for t in failed)
    assert "boom" in failed[0].error and "non-finite" in failed[1].error
    assert loop.best().status == "ok"
    with pytest.raises(ValueError, match="already finished"):
        loop.finish(0, {"status": "ok", "reward": 1.0})
