"""Did a change meant to keep the stage engine's decisions keep them? (A fingerprint of its decisions.)

A fingerprint of the stage engine's decisions, to show that a change meant to be behaviour-preserving is:

    .venv/bin/python benchmarks/stage_engine_decisions.py

Drives the engine as ``benchmarks/stage_engine_cost.py`` does (4, 16 and 32 requests kept waiting, max_stage_batch
1 and 8, 1,000 decisions each), with lognormal noise (sigma 0.3) on every call's time, and hashes every plan (the
step, the requests it runs, finishes and fails) and every admission. Run it on the code before and after a change
(``git stash`` or a worktree): the same hash means the same 6,000 decisions. Prints the decisions and the hash.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stage_engine_cost as cost  # noqa: E402  (the same engine, profile and request mix)


def fingerprint(waiting=(4, 16, 32), batches=(1, 8), decisions: int = 1000) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    for w in waiting:
        for max_batch in batches:
            rng = np.random.default_rng(0)
            engine = cost.make_engine(max_batch, rng)
            now = 0.0
            for _ in range(w):
                engine.add(cost.new_job(now, rng), now)
            for _ in range(decisions):
                plan = engine.plan(now)
                digest.update(repr((plan.step, [j.id for j in plan.jobs], [j.id for j in plan.finished],
                                    [j.id for j in plan.failed])).encode())
                ended = []
                if plan.step is not None:
                    seconds = engine.predict(plan.step, len(plan.jobs), 0.5) * rng.lognormal(0, 0.3)
                    now += seconds
                    ended = engine.ran(plan.step, plan.jobs, seconds, now)
                count += 1
                gone = len(plan.finished) + len(plan.failed) + len(ended)
                for _ in range(max(gone, w - engine.waiting)):
                    digest.update(repr(engine.add(cost.new_job(now, rng), now)).encode())
    return count, digest.hexdigest()[:16]


def main() -> int:
    count, digest = fingerprint()
    print(f"{count} decisions, hash {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
