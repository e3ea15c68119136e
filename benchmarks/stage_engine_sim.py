"""Where do requests end when the stage engine alone replays a real run's traces on a simulated clock?

    .venv/bin/python benchmarks/stage_engine_sim.py [--real runs/bench/progressive.json] [--sigma 0.3]
        [--set protect_z=1.0 --set insure_quantile=0.9 --set optional_heads=0]

For exploring, and beside the real clock only: it replays, request for request (``plan_trace`` with the run's
seeds, rates and budgets), the progressive rows of a ``benchmarks/progressive.py`` report and prints the real
numbers next to the simulated ones. One executor runs the engine's plans; a call of a step at batch b takes the
default model's graph time (as the progressive model calibrates it on this machine: features 4 / 2.5 / 2.5 /
2.5 ms, heads 5.5 ms) times b, times lognormal noise (``--sigma``), plus what the executor spends around the graph
(1.2 ms a call, measured; README "What a call costs beyond its graph"). The engine's prior is the graphs' time
alone, as in the model, and it learns the whole call. The gateway is not simulated: each budget reaches the engine
less what the gateway spends around the model (decoding, the way there and back, the answer margin: 9 ms).

It prints, per mode and load: met (an exit sent before the deadline), refused by the engine, admitted without an
exit, and the exits answered with the median time to spare at each (time left before the deadline when the
answer was sent: answers at a shallow exit with much time to spare are depth the engine gave away).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.serving.latency import LatencyProfile  # noqa: E402
from anytime.serving.progressive import FEATURES, Job, StageEngine, Step  # noqa: E402

from stage_engine_cost import FEATURES_MS, HEAD_MS  # noqa: E402  (the default model's step times, one place)

CALL_MS, GATEWAY_MS = 1.2, 9.0


def graph_ms(step: Step) -> float:
    return FEATURES_MS[step.level - 1] if step.kind == FEATURES else HEAD_MS


def make_engine(rng: np.random.Generator, **kwargs) -> StageEngine:
    n = len(FEATURES_MS)
    prior = {}
    for k in range(1, n + 1):
        for key, ms in ((k, FEATURES_MS[k - 1]), (n + k, HEAD_MS)):
            prior[key] = {b: {"samples_ms": (ms * b * rng.lognormal(0, 0.1, 5)).tolist()} for b in (1, 2, 4, 8)}
    return StageEngine(LatencyProfile(prior, cumulative=False), n, **kwargs)


def simulate(trace, max_batch: int, seed: int = 0, sigma: float = 0.3, **engine_kwargs) -> dict:
    """``trace``: ``plan_trace`` records (budget in ms, arrival in s); ``engine_kwargs`` go to the engine."""
    rng = np.random.default_rng(seed)
    engine = make_engine(rng, max_batch=max_batch, **engine_kwargs)
    requests = len(trace)
    arrivals = [r.arrival_s for r in trace]
    budgets = [(r.budget_ms - GATEWAY_MS) / 1000 for r in trace]
    outcome: dict[int, tuple] = {}
    events = [(t, 0, i) for i, t in enumerate(arrivals)]  # (time, kind 0 arrival / 1 call done, index)
    heapq.heapify(events)
    jobs, busy, now = {}, None, 0.0

    made: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)  # job -> (exit, when its head ended)

    def settle(job: Job) -> None:
        """The answer is the deepest exit made by the deadline, as the gateway answers (a deeper step that ends
        late costs nothing but executor time)."""
        if job.id not in outcome:
            in_time = [(e, job.deadline - at) for e, at in made[job.id] if at <= job.deadline]
            outcome[job.id] = max(in_time) if in_time else (0, None)

    while events or busy:
        if busy is None:
            plan = engine.plan(now)
            for job in plan.finished + plan.failed:
                settle(job)
            if plan.step is not None:
                seconds = sum(graph_ms(plan.step) * rng.lognormal(0, sigma) for _ in plan.jobs) / 1000
                seconds += CALL_MS / 1000
                busy = (plan.step, plan.jobs, now)
                heapq.heappush(events, (now + seconds, 1, -1))
        if not events:
            break
        now, kind, i = heapq.heappop(events)
        if kind == 0:
            job = Job(deadline=now + budgets[i], arrival=now, max_exit=len(FEATURES_MS))
            jobs[job.id] = job
            if not engine.add(job, now):
                outcome[job.id] = ("refused", None)
        else:
            step, ran, start = busy
            busy = None
            ended = engine.ran(step, ran, now - start, now)
            if step.kind != FEATURES:
                for job in ran:
                    made[job.id].append((job.exit, now))
            for job in ended:
                settle(job)
    for job in jobs.values():  # still waiting when the trace ended (none should)
        settle(job)
    answered = [v for v in outcome.values() if isinstance(v[0], int) and v[0] > 0]  # all in time, by construction
    spare = collections.defaultdict(list)
    for exit, left in answered:
        spare[exit].append(left * 1e3)
    return {"met": len(answered) / requests,
            "refused": sum(v[0] == "refused" for v in outcome.values()) / requests,
            "no_exit": sum(v[0] == 0 for v in outcome.values()) / requests,
            "exits": {e: len(v) for e, v in sorted(spare.items())},
            "spare_ms": {e: float(np.median(v)) for e, v in sorted(spare.items())}}


def main() -> int:
    import json

    from anytime.clients.loadgen import plan_trace

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", type=Path, default=Path("runs/bench/progressive.json"),
                    help="a report of benchmarks/progressive.py whose traces to replay")
    ap.add_argument("--sigma", type=float, default=0.3, help="lognormal noise of a graph's time")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="an engine setting, e.g. --set protect_z=1.0 --set insure_quantile=0.9 (default: its own)")
    ap.add_argument("--exit-ap", default="0.225,0.274,0.291,0.296",
                    help="COCO AP of each exit on the whole split (`anytime eval --json` of the default model): the "
                         "AP column is their sum over the answers in time divided by the requests, a proxy for AP at "
                         "budget (on run D it gave 0.268 / 0.212 for upfront / progressive at 50%% load where the "
                         "real AP was 0.259 / 0.207)")
    args = ap.parse_args()
    settings = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    exit_ap = [float(x) for x in args.exit_ap.split(",")]
    report = json.loads(args.real.read_text())
    print(f"replaying the traces of {args.real} (budgets {report['profile']['budgets']} ms)")
    print(f"engine settings: {settings or 'its defaults'}")
    print(f"{'load':>5} {'mode':>24} {'real met':>9} {'sim met':>8} {'refused':>8} {'no exit':>8} {'real AP':>8} "
          f"{'sim AP~':>8}  simulated exits (median ms to spare)")
    for mode, max_batch in (("progressive, no batching", 1), ("progressive", 8)):
        for load, real in report["trace"].get(mode, {}).items():
            trace = plan_trace(list(range(real["requests"])), real["budget"], real["rate"], real["requests"],
                               real["seed"])
            r = simulate(trace, max_batch, sigma=args.sigma, **settings)
            ap = sum(exit_ap[e - 1] * n for e, n in r["exits"].items()) / real["requests"]
            print(f"{float(load):>5.0%} {mode:>24} {real['budget_met_rate']:>9.1%} {r['met']:>8.1%} "
                  f"{r['refused']:>8.1%} {r['no_exit']:>8.1%} {real['AP'] or 0:>8.3f} {ap:>8.3f}  "
                  + " ".join(f"{e}:{n} ({r['spare_ms'][e]:.0f})" for e, n in r["exits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
