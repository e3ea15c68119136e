"""``anytime demo``: the README's main job, end to end on the embedded default model.

1. make sure the default benchmark exists (generated, deterministic) and the default model is exported;
2. start a real Triton server and the anytime gateway on loopback;
3. stream the val split through the gateway at several budgets and arrival rates (open loop);
4. print the table (AP, budget met, latency, exits) and write the plots to runs/demo/;
5. stop everything it started.
"""

from __future__ import annotations

import argparse
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
    p.set_defaults(func=run)


def _step(message: str) -> float:
    print(f"\n== {message}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    from anytime.config import DEFAULT_CHECKPOINT, DEFAULT_REPOSITORY
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.exporter import ensure_exported
    from anytime.clients.loadgen import loadgen
    from anytime.clients.report import format_table
    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc
    from anytime.serving.stack import ServingStack

    start = time.perf_counter()
    data = args.data or DEFAULT_DATA_DIR
    repository = args.repository or DEFAULT_REPOSITORY
    _step(f"data: {data}")
    if args.data is None:
        ensure_default(data)
    _step(f"model: {DEFAULT_CHECKPOINT.name} -> {repository}/")
    ensure_exported(repository, DEFAULT_CHECKPOINT, replace_stale=True)
    _step("starting Triton and the anytime gateway on loopback")
    import grpc

    with ServingStack(repository) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            info = pb_grpc.DetectorStub(channel).GetModelInfo(pb.ModelInfoRequest())
        prof = {p.exit: p for p in info.endpoints[0].profile}
        exits = sorted(prof)
        for e in exits:
            print(f"  exit {e}: p50 {prof[e].p50_ms:.1f} ms, p95 {prof[e].p95_ms:.1f} ms (measured on this machine)")
        # Budgets from "only exit 1 fits" to "every exit fits"; rates at about half and all of the deepest exit's
        # capacity (one request in flight at a time).
        first, last = prof[exits[0]].p95_ms, prof[exits[-1]].p95_ms
        budgets = sorted({round(first * 1.5 + 5), round((first + last) / 2 * 1.5 + 5), round(last * 3 + 10)})
        capacity = 1000.0 / prof[exits[-1]].p50_ms
        rates = [round(capacity * 0.5, 1), round(capacity * 1.0, 1)]
        print(f"  gateway at {stack.address}; budgets {budgets} ms; rates {rates} requests/s")
        _step(f"streaming {args.requests} val images per setting through the gateway")
        report = loadgen(stack.address, data, budgets_ms=budgets, rates=rates, requests=args.requests, out=args.out)
    _step("results")
    print(format_table(report))
    print(f"\nplots and JSON in {args.out}/: {', '.join(Path(p).name for p in report['plots'])}, loadgen.json")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; everything it started has stopped.")
    print("Try it yourself:  .venv/bin/anytime serve   and in another shell   "
          ".venv/bin/anytime detect data/synth/val/000000.png --budget-ms 40", file=sys.stderr)
    return 0
