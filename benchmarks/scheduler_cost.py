"""What does one scheduling decision cost, by queue length?

    .venv/bin/python benchmarks/scheduler_cost.py [--repeats 2000]

The scheduler runs on the gateway's event loop, so its cost is latency every request pays. Each operation is
timed at a steady queue length (the queue is refilled after each measured call): ``check`` is an admission that
reserves a place (then cancelled), ``submit`` an admission of a ready request (then cancelled), ``dispatch``
one completion and the dispatch it triggers (exit choice included). The profile is 4 exits with 20
calibration-sized samples each, like the gateway's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.serving.latency import LatencyProfile  # noqa: E402
from anytime.serving.scheduler import Rejected, Request, Scheduler, SchedulerConfig  # noqa: E402

QUEUE_LENGTHS = (0, 16, 64, 256)


def make_scheduler(queue: int, rng: np.random.Generator) -> Scheduler:
    samples = {k: (v * rng.lognormal(0, 0.05, 20)).tolist() for k, v in {1: 10, 2: 11, 3: 12, 4: 13}.items()}
    s = Scheduler({"triton": LatencyProfile.from_samples(samples)}, SchedulerConfig(max_queue=queue + 8))
    s.submit(Request(deadline=1e6, arrival=0.0), now=0.0)
    s.dispatch(0.0)  # one call in flight, as under load
    for i in range(queue):  # deadlines far enough out that every one is admitted
        s.submit(Request(deadline=100.0 + rng.uniform(0, 100), arrival=0.0), now=0.0)
    return s


def time_op(queue: int, op: str, repeats: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    s = make_scheduler(queue, rng)
    out = np.empty(repeats)
    now = 0.0
    for i in range(repeats):
        req = Request(deadline=100.0 + rng.uniform(0, 100), arrival=now)
        if op == "dispatch":
            s.submit(req, now)  # keep the queue at its length: one in, one out
            (a,) = s.busy["triton"].values()
            t0 = time.perf_counter_ns()
            s.complete(a, now, latency=a.expected)
            s.dispatch(now)
            out[i] = time.perf_counter_ns() - t0
            now += 1e-4
            continue
        t0 = time.perf_counter_ns()
        try:
            s.admit(req, now) if op == "check" else s.submit(req, now)
        except Rejected:
            pass
        out[i] = time.perf_counter_ns() - t0
        s.cancel(req)
    return out / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    print(f"{'queue':>6} {'check p50':>10} {'check p99':>10} {'submit p50':>11} {'submit p99':>11} "
          f"{'dispatch p50':>13} {'dispatch p99':>13}   (microseconds)")
    for q in QUEUE_LENGTHS:
        cells = []
        for op in ("check", "submit", "dispatch"):
            t = time_op(q, op, args.repeats)
            cells += [np.percentile(t, 50), np.percentile(t, 99)]
        print(f"{q:>6} {cells[0]:>10.1f} {cells[1]:>10.1f} {cells[2]:>11.1f} {cells[3]:>11.1f} "
              f"{cells[4]:>13.1f} {cells[5]:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
