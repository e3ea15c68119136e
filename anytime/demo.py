"""``anytime demo``: the README's main job, end to end on the embedded default model.

1. make sure the default benchmark exists (generated, deterministic) and the default model is exported;
2. start a real Triton server and the anytime gateway on loopback;
3. measure the stack end to end (capacity, and the p99 at half of it of three options: the cheapest, the deepest exit
   at the model's own size, the most expensive) and choose budgets from that;
4. stream the val split through the gateway at those budgets (and two tighter ones) at half capacity, then once at
   twice capacity;
5. send the half-capacity traces straight to Triton too, with exit 1 and with the deepest exit at the model's size
   (what a user without the gateway would run) and with the cheapest option, beside the gateway's rows;
6. print the tables (AP, budget met, latency, exits; the peers beside the gateway), a sentence on what was met and
   on every budget where a peer did better, and write the plots to runs/demo/;
7. stop everything it started.
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
    # supervised, as `anytime serve` runs it: Triton 2.51 can crash under many cancelled calls (server#7840; the
    # direct peers cancel every call whose budget runs out), and a restart within seconds keeps the demo going
    with ServingStack(repository, restart_triton=True) as stack:
        plan = plan_settings(stack.address, data, probe_requests=args.probe_requests)
        print(f"  gateway at {stack.address}; measured end to end: {plan['capacity']:.1f} requests/s with 4 clients; "
              f"at {plan['rate']:g} requests/s, " + ", ".join(f"option {o} p99 {ms:.1f} ms" for o, ms in
                                                          plan["p99_ms"].items()))
        print(f"  budgets {plan['budgets']} ms at {plan['rate']:g} requests/s (about half of capacity), tighter ones "
              f"{plan['tight_budgets']} ms (the cheapest option's p50 and p90 there), then {plan['budgets'][0]} ms at "
              f"{plan['overload_rate']:g} requests/s (twice capacity)")
        _step(f"streaming {args.requests} val images per setting through the gateway")
        report = loadgen(stack.address, data, requests=args.requests, out=args.out, pairs=plan["pairs"],
                         extra={"plan": {k: v for k, v in plan.items() if k != "pairs"}})
        _step("the same traces sent straight to Triton with exit 1, the deepest exit and the cheapest option (the "
              "simplest peers)")
        report["peers"] = peer_rows(stack, data, [p for p in plan["pairs"] if p[1] == plan["rate"]], args.requests)
        report["triton_restarts"] = stack.restarts
        if stack.restarts:
            print(f"  (Triton crashed and was restarted {stack.restarts} time(s) during the demo; a peer's row that "
                  "met a restart was run again)")
        write_report(report, args.out)
    _step("results")
    print(format_table(report))
    print("\n" + format_peers(report))
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
    2. At ``load`` x capacity (open loop), the client-side p99 of three options, each pinned alone
       (``DetectRequest.option``): the cheapest, the deepest exit at the model's own size, and the most expensive.
    3. Budgets: 1.5 x those p99s (+ 2 ms): each leaves its option the room its slow requests need at that load, so
       that the scheduler keeps >= 99 % of them in time, and the accuracy it can afford rises with the budget (input
       size and depth together span about 12x in compute; depth alone, at one size, 1.7x). An overload row (the
       smallest budget at twice capacity) shows what happens when nothing fits everyone: fast refusals, not late
       answers.
    4. Two tighter budgets, the cheapest option's p50 and p90 at that load: budgets that cannot be promised, where
       the gateway refuses at once what would be late and answers the rest with the option that fits. They are not
       part of the promise.
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
        info = pb_grpc.DetectorStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=10)
    options = [o.name for o in info.options]  # cheapest first
    own = [o.name for o in info.options if o.image_size == info.image_size]
    deepest_own = max(own, key=lambda name: int(name.split("/")[1]))
    probes = list(dict.fromkeys([options[0], deepest_own, options[-1]]))
    p99, first = {}, []
    for name in probes:
        result = asyncio.run(run_setting(address, dataset, 10_000.0, rate, probe_requests, seed=1, option=name,
                                         progress=False))
        latencies = [r.latency_ms for r in result.records if r.latency_ms is not None]
        p99[name] = float(np.percentile(latencies, 99)) if latencies else 10_000.0
        first = first or latencies
    # Each budget at least 2 ms above the one before: a p99 measured at or below a cheaper option's (a few probe
    # requests on a noisy machine) is noise, and the promised budgets stay distinct.
    budgets = []
    for name in probes:
        b = int(math.ceil(1.5 * p99[name] + 2))
        budgets.append(max(b, budgets[-1] + 2) if budgets else b)
    if len(budgets) == 2:  # one input size: its first and deepest exit, and the middle of the two
        budgets.insert(1, (budgets[0] + budgets[1]) // 2)
    elif len(budgets) == 1:
        budgets += [budgets[0] + 2, budgets[0] + 4]
    tight = sorted({int(math.ceil(np.percentile(first, q))) for q in (50, 90)} - set(budgets)) if first else []
    pairs = [(b, rate) for b in tight + budgets] + [(budgets[0], round(2 * capacity, 1))]
    return {"capacity": capacity, "rate": rate, "overload_rate": pairs[-1][1], "p99_ms": p99, "budgets": budgets,
            "tight_budgets": tight, "pairs": pairs}


def peer_rows(stack, data, pairs: list, requests: int, seed: int = 0) -> list[dict]:
    """Each (budget, rate) of ``pairs`` sent straight to Triton by a careful user with one fixed exit (exit 1 and
    the deepest, at the model's own size) and with the cheapest option, on the very trace the gateway got (``loadgen.plan_trace`` with the same seed): the rows
    ``loadgen.evaluate_results`` makes, with ``way`` naming the peer. Each request's clock starts at its planned
    arrival (``anytime.clients.direct.run_trace``)."""
    import asyncio

    from anytime.clients.detect import image_bytes
    from anytime.clients.direct import DirectClient, run_trace
    from anytime.clients.loadgen import SettingResult, evaluate_results, open_dataset, parse_budget, plan_trace
    from anytime.options import from_manifest
    from anytime.export.repository import read_manifest

    manifest = read_manifest(stack.repository)
    exits = sorted(int(e["exit"]) for e in manifest["exits"])
    dataset = open_dataset(data)
    url = stack.tritons[0].grpc_url
    n = min(requests, len(dataset))

    cheapest = from_manifest(manifest)[0]

    async def run(way, records, payloads):
        client = DirectClient(url, manifest)
        try:
            pixels, _, _ = client.prepare(payloads[0])
            await client.infer(exits[0], pixels)  # connected before the clock starts
            send = client.sender(payloads, option=way) if isinstance(way, str) else client.sender(payloads, exit=way)
            return await run_trace(records, send)
        finally:
            await client.close()

    ways = list(dict.fromkeys([exits[0], exits[-1]]))
    if cheapest.image_size != int(manifest["image_size"]):
        ways.append(cheapest.name)

    def attempt(way, budget, rate):
        """The row on fresh records, again after a Triton restart (up to 3 times): a row that met a crash of
        Triton is run anew once it is back, not reported half empty."""
        for tries in range(3):
            stack.tritons[0].wait_ready(120)
            records = plan_trace(dataset.ids, budget, rate, n, seed)
            payloads = [image_bytes(dataset.image_dir / dataset.coco.imgs[r.image_id]["file_name"]) for r in records]
            restarts = stack.restarts
            try:
                wall = asyncio.run(run(way, records, payloads))
            except Exception:  # tritonclient's error of a server that went away before the clock started
                if tries == 2:
                    raise
                continue
            if stack.restarts == restarts or tries == 2:
                return records, wall

    rows = []
    for way in ways:
        for budget, rate in pairs:
            records, wall = attempt(way, budget, rate)
            row = evaluate_results(SettingResult(url, parse_budget(budget), float(rate), seed, records, wall),
                                   dataset.coco)
            rows.append({**row, "way": f"option {way} direct" if isinstance(way, str) else f"exit {way} direct"})
    return rows


def write_report(report: dict, out: Path) -> None:
    """loadgen.json and the plots again, now with the peers' rows."""
    import json

    from anytime.clients.report import write_plots

    report["plots"] = [str(p) for p in write_plots(report, out)]
    (Path(out) / "loadgen.json").write_text(json.dumps(report, indent=2) + "\n")


def format_peers(report: dict) -> str:
    """Per budget at half capacity: the gateway beside each peer, met % and AP at budget."""
    peers = report.get("peers") or []
    ways = sorted({p["way"] for p in peers})
    lines = ["budget ms  rate/s  " + "  ".join(f"{w:>22s}" for w in ["gateway", *ways]) + "   (met % / AP %)"]
    for s in report["settings"]:
        mine = {p["way"]: p for p in peers if p["budget"] == s["budget"] and p["rate"] == s["rate"]}
        if not mine:
            continue
        cells = [f"{100 * r['budget_met_rate']:5.1f} / {100 * (r['AP'] or 0):4.1f}" for r in [s, *(mine[w] for w in ways)]]
        lines.append(f"{s['budget']:>9s}  {s['rate']:6g}  " + "  ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


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
        text += (" Tighter budgets (the cheapest option's p50 and p90 at this load, not promised): " + ", ".join(
            f"{s['budget']} ms {100 * s['budget_met_rate']:.1f} % met, AP {100 * (s['AP'] or 0):.1f}" for s in sweep)
            + ".")
    text += (f" At twice capacity ({over['rate']:g}/s, {over['budget']} ms): {refused} of {over['requests']} "
             f"refused at once (within 10 ms), {over['late']} late answers, "
             f"{100 * over['budget_met_rate']:.1f} % met.")
    return text + " " + peers_sentence(report)


def peers_sentence(report: dict) -> str:
    """Every budget where a peer met more budgets or earned a higher AP than the gateway, named."""
    peers = report.get("peers") or []
    if not peers:
        return ""
    beaten = []
    for s in report["settings"]:
        for p in (p for p in peers if p["budget"] == s["budget"] and p["rate"] == s["rate"]):
            what = [w for w, better in (("met more", p["budget_met_rate"] > s["budget_met_rate"]),
                                        ("a higher AP", (p["AP"] or 0) > (s["AP"] or 0))) if better]
            if what:
                beaten.append(f"{s['budget']} ms ({p['way']} {' and '.join(what)}: "
                              f"{100 * p['budget_met_rate']:.1f} % met, AP {100 * (p['AP'] or 0):.1f}, against "
                              f"{100 * s['budget_met_rate']:.1f} % and {100 * (s['AP'] or 0):.1f})")
    if not beaten:
        return ("Served straight to Triton with exit 1, the deepest exit or the cheapest option, no budget met more or "
                "earned a higher AP.")
    return "Where a peer did better than the gateway: " + "; ".join(beaten) + "."
