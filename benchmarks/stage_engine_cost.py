"""What one decision of the progressive stage engine costs, by requests waiting and by stage batch size.

    .venv/bin/python benchmarks/stage_engine_cost.py [--decisions 2000]

The engine plans inside the progressive Triton model's python stub, on the same cores as ONNX Runtime, about
five times per request (four stages' features and a head), so its cost is compute every request pays. Each
decision is a ``plan`` and the ``ran`` that follows it, at a steady number of waiting requests (every request
that ends is replaced by a new one). The profile is the default model's shape: 4 stages, features 4 / 2.5 / 2.5 /
2.5 ms and heads 5.5 ms at batch 1, a batch of b costing b calls, 8 calibration-sized samples each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.serving.latency import LatencyProfile  # noqa: E402
from anytime.serving.progressive import Job, StageEngine  # noqa: E402

WAITING = (4, 16, 32, 64)
BATCHES = (1, 8)
FEATURES_MS, HEAD_MS = (4.0, 2.5, 2.5, 2.5), 5.5


def make_engine(max_batch: int, rng: np.random.Generator) -> StageEngine:
    n = len(FEATURES_MS)
    per_key = {k + 1: ms for k, ms in enumerate(FEATURES_MS)} | {n + k + 1: HEAD_MS for k in range(n)}
    prior = {key: {b: {"samples_ms": (ms * b * rng.lognormal(0, 0.05, 8)).tolist()} for b in (1, 2, 4, 8)}
             for key, ms in per_key.items()}
    return StageEngine(LatencyProfile(prior, cumulative=False), n, max_batch=max_batch)


def new_job(now: float, rng: np.random.Generator) -> Job:
    """A request whose budget lets it go anywhere from exit 1 to exit 4."""
    return Job(deadline=now + rng.uniform(0.02, 0.2), arrival=now, max_exit=4)


def cost_us(waiting: int, max_batch: int, decisions: int) -> float:
    rng = np.random.default_rng(0)
    engine = make_engine(max_batch, rng)
    now = 0.0
    for _ in range(waiting):
        engine.add(new_job(now, rng), now)
    spent, done = 0.0, 0
    while done < decisions:
        t0 = time.perf_counter()
        plan = engine.plan(now)
        ended = []
        if plan.step is not None:
            seconds = engine.predict(plan.step, len(plan.jobs), 0.5)
            now += seconds
            ended = engine.ran(plan.step, plan.jobs, seconds, now)
        spent += time.perf_counter() - t0
        done += 1
        gone = len(plan.finished) + len(plan.failed) + len(ended)
        for _ in range(max(gone, waiting - engine.waiting)):  # keep the number waiting steady
            engine.add(new_job(now, rng), now)
    return spent / decisions * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decisions", type=int, default=2000)
    args = ap.parse_args()
    rows = {(w, b): cost_us(w, b, args.decisions) for w in WAITING for b in BATCHES}
    print(f"\nMicroseconds per decision (plan + ran), {args.decisions} decisions each")
    print(f"{'requests waiting':>16} " + " ".join(f"{'max_stage_batch ' + str(b):>18}" for b in BATCHES)
          + f" {'ratio':>7}")
    for w in WAITING:
        cells = [rows[(w, b)] for b in BATCHES]
        print(f"{w:>16} " + " ".join(f"{c:>18.0f}" for c in cells) + f" {cells[-1] / cells[0]:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
