"""``anytime demo``: the README's main job, end to end on the embedded default model.

1. make sure the default benchmark exists (generated, deterministic) and the default model is exported;
2. start a real Triton server and the anytime gateway on loopback;
3. measure the stack end to end (capacity, and each exit's p99 at half of it) and choose budgets from that;
4. stream the val split through the gateway at those budgets (and two tighter ones) at half capacity, then once at
   twice capacity;
5. print the table (AP, budget met, latency, exits), a sentence on what was met, and write the plots to runs/demo/;
6. stop everything it started.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the serving demo on the embedded default model (the README's main command)",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", type=Path, default=None, help="COCO-format dataset (default: the default benchmark)")
    p.add_argument("--repository", type=Path, default=None, help="where to export (default: model_repository/)")
    p.add_argument("--requests", type=int, default=200, help="requests per setting")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--probe-requests", type=int, default=100,
                   help="requests per measurement that chooses the budgets and rates (default: %(default)s)")
    p.set_defaults(func=run)


def _step(message: str) -> float:
    print(f"\n== {message}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    from anytime.cli import UserError
    from anytime.config import DEFAULT_CHECKPOINT, DEFAULT_REPOSITORY
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.ensure import ExportFailed, ensure_exported
    from anytime.clients.loadgen import loadgen
    from anytime.clients.report import format_table
    from anytime.serving.stack import ServingStack

    start = time.perf_counter()
    data = args.data or DEFAULT_DATA_DIR
    repository = args.repository or DEFAULT_REPOSITORY
    _step(f"data: {data}")
    if args.data is None:
        ensure_default(data)
    _step(f"model: {DEFAULT_CHECKPOINT.name} -> {repository}/")
    try:
        ensure_exported(repository, DEFAULT_CHECKPOINT, replace_stale=True)  # in a child process, if at all
    except ExportFailed as e:
        raise UserError(str(e)) from None
    _step("starting Triton and the anytime gateway on loopback")
    with ServingStack(repository) as stack:
        plan = plan_settings(stack.address, data, probe_requests=args.probe_requests)
        print(f"  gateway at {stack.address}; measured end to end: {plan['capacity']:.1f} requests/s with 4 clients; "
              f"at {plan['rate']:g} requests/s, " + ", ".join(f"exit {e} p99 {ms:.1f} ms" for e, ms in
                                                          plan["p99_ms"].items()))
        print(f"  budgets {plan['budgets']} ms at {plan['rate']:g} requests/s (about half of capacity), tighter ones "
              f"{plan['tight_budgets']} ms (exit 1's p50 and p90 there), then {plan['budgets'][0]} ms at "
              f"{plan['overload_rate']:g} requests/s (twice capacity)")
        _step(f"streaming {args.requests} val images per setting through the gateway")
        report = loadgen(stack.address, data, requests=args.requests, out=args.out, pairs=plan["pairs"],
                         extra={"plan": {k: v for k, v in plan.items() if k != "pairs"}})
    _step("results")
    print(format_table(report))
    print("\n" + summary(report))
    print(f"\nplots and JSON in {args.out}/: {', '.join(Path(p).name for p in report['plots'])}, loadgen.json")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; everything it started has stopped.")
    print("Try it yourself:  .venv/bin/anytime serve   and in another shell   "
          ".venv/bin/anytime detect data/synth/val/000000.png --budget-ms 40", file=sys.stderr)
    return 0


def plan_settings(address: str, data, probe_requests: int = 100, load: float = 0.5) -> dict:
    """The demo's settings, from what the served stack measures end to end, on the client's clock, at the demo's
    own load and on its own images (decoding included), not from the model's profile alone.

    1. Capacity: answers per second with 4 closed-loop clients and generous budgets.
    2. At ``load`` x capacity (open loop), the first and the last exit's client-side p99 when each is the only one
       asked for.
    3. Budgets: 1.5 x those p99s (+ 2 ms), and the middle of the two: each leaves the exit the room its slow
       requests need at that load, so that the scheduler keeps >= 99 % of them in time. An overload row (the
       smallest budget at twice capacity) shows what happens when no exit fits everyone: fast refusals, not late
       answers. On the 2-core CPU the trade-off hardly shows at these budgets: exit 1's p99 at half load
       (queueing, decoding) is several times the few milliseconds that separate exit 1 from exit 4, so any budget
       that keeps exit 1 in time lets exit 4 fit whenever the queue is short.
    4. Two tighter budgets, exit 1's p50 and p90 at that load, show the trade-off itself: budgets that cannot be
       promised, where the gateway refuses at once what would be late and answers the rest with the exit that
       fits. They are not part of the promise.
    """
    import asyncio

    import grpc
    import numpy as np

    from anytime.clients.detect import image_bytes
    from anytime.clients.loadgen import closed_loop, open_dataset, run_setting
    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc

    dataset = open_dataset(data)
    files = [dataset.image_dir / dataset.coco.imgs[i]["file_name"] for i in dataset.ids[:probe_requests]]
    payloads = [image_bytes(f) for f in files]
    capacity = asyncio.run(closed_loop(address, payloads, 2 * probe_requests, clients=4))["throughput"]
    rate = round(load * capacity, 1)

    with grpc.insecure_channel(address) as channel:
        exits = list(pb_grpc.DetectorStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=10).exits)
    p99, first = {}, []
    for e in sorted({exits[0], exits[-1]}):
        result = asyncio.run(run_setting(address, dataset, 10_000.0, rate, probe_requests, seed=1, exits=(e, e),
                                         progress=False))
        latencies = [r.latency_ms for r in result.records if r.latency_ms is not None]
        p99[e] = float(np.percentile(latencies, 99)) if latencies else 10_000.0
        first = first or latencies
    low, high = (int(math.ceil(1.5 * p99[e] + 2)) for e in (exits[0], exits[-1]))
    budgets = sorted({low, (low + high) // 2, high})
    tight = sorted({int(math.ceil(np.percentile(first, q))) for q in (50, 90)} - set(budgets)) if first else []
    pairs = [(b, rate) for b in tight + budgets] + [(budgets[0], round(2 * capacity, 1))]
    return {"capacity": capacity, "rate": rate, "overload_rate": pairs[-1][1], "p99_ms": p99, "budgets": budgets,
            "tight_budgets": tight, "pairs": pairs}


def summary(report: dict) -> str:
    """One sentence on what was met: the promise at half capacity, and the overload row."""
    plan, settings = report["plan"], report["settings"]
    tight = set(plan.get("tight_budgets", []))
    over = settings[-1]
    main = [s for s in settings[:-1] if s["budget_ms"] not in tight]
    sweep = [s for s in settings[:-1] if s["budget_ms"] in tight]
    met = ", ".join(f"{s['budget']} ms {100 * s['budget_met_rate']:.1f} %" for s in main)
    aps = [s["AP"] for s in main]
    refused = over.get("refused_at_once", 0)
    text = (f"At {plan['rate']:g} requests/s (half of the {plan['capacity']:.1f}/s this stack measured), budgets met: "
            f"{met}; AP at budget {100 * aps[0]:.1f} -> {100 * aps[-1]:.1f} from the smallest budget to the largest.")
    if sweep:
        text += (" Tighter budgets (exit 1's p50 and p90 at this load, not promised): " + ", ".join(
            f"{s['budget']} ms {100 * s['budget_met_rate']:.1f} % met, AP {100 * (s['AP'] or 0):.1f}" for s in sweep)
            + ".")
    return text + (f" At twice capacity ({over['rate']:g}/s, {over['budget']} ms): {refused} of {over['requests']} "
                   f"refused at once (within 10 ms), {over['late']} late answers, "
                   f"{100 * over['budget_met_rate']:.1f} % met.")
