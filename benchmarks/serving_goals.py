"""Does every admitted request get its answer in time, on photos and on the benchmark's images, under load?

    .venv/bin/python benchmarks/serving_goals.py [--sets photos,bench] [--executions upfront,progressive]
                                                  [--requests 300] [--busy]

The protocol of the serving issue, through the real gateway and Triton, on the client's clock:

- **T**: closed-loop throughput, 4 clients, generous budgets (10 s), the set's images (``loadgen.closed_loop``).
- **D**: idle p50, 20 requests one at a time, generous budgets.
- Rows: Poisson arrivals at 50 % of T with budget 3D, 80 % / 3D and 50 % / 1.5D; with ``--busy`` also 50 % / 2D
  while a busy loop holds one core for the whole row (T and D measured before it started).
- Per row: **met** (answered OK within budget, over all sent), **refused at once** (an error within 10 ms),
  **admitted in time** (met over those not refused at once), late answers, and how every other request ended.

T and D are measured once per set on the first execution's stack, and every execution gets the same budgets and
rates; the executions' stacks are up together and take turns row by row, in an order that alternates, so a drift
of the machine's speed does not fall between them. Writes runs/bench/serving_goals.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = ((0.5, 3.0), (0.8, 3.0), (0.5, 1.5))
BUSY_ROW = (0.5, 2.0)


def measure_t_and_d(address: str, payloads: list[bytes], requests: int = 160) -> tuple[float, float]:
    from anytime.clients.loadgen import closed_loop

    asyncio.run(closed_loop(address, payloads, 20, clients=4))  # warm
    t = asyncio.run(closed_loop(address, payloads, requests, clients=4))["throughput"]
    d = float(np.median(asyncio.run(closed_loop(address, payloads, 20, clients=1))["latencies_ms"]))
    return t, d


def run_row(address: str, dataset, budget_ms: float, rate: float, requests: int, seed: int) -> dict:
    from anytime.clients.loadgen import evaluate_results, run_setting

    result = asyncio.run(run_setting(address, dataset, budget_ms, rate, requests, seed=seed, progress=False))
    row = evaluate_results(result, dataset.coco)
    row["outcomes"] = dict(Counter(_outcome(r) for r in result.records).most_common())
    examples: dict[str, list[str]] = {}
    for r in result.records:
        if r.status != "OK" and len(examples.setdefault(_outcome(r), [])) < 5:
            examples[_outcome(r)].append(r.error)
    row["examples"] = examples
    return row


def _outcome(record) -> str:
    """How a request ended, its message's numbers left out so that alike outcomes count together."""
    if record.status == "OK":
        return "OK in time" if record.budget_met else "OK late"
    return f"{record.status} {re.sub(r'[0-9.]+', '#', record.error.split(':')[0] if 'overloaded' in record.error else record.error)[:70]}"


@contextlib.contextmanager
def _pythonpath(path):
    """The gateway that a stack starts meanwhile imports ``anytime`` from ``path`` (None: this checkout's)."""
    before = os.environ.get("PYTHONPATH")
    if path is not None:
        os.environ["PYTHONPATH"] = str(Path(path).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def busy_loop() -> subprocess.Popen:
    """A process that keeps one core busy until killed (a noisy neighbour)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@contextlib.contextmanager
def neighbour(busy: bool):
    """A busy loop on one core for the duration of the block, when ``busy``."""
    process = busy_loop() if busy else None
    try:
        yield
    finally:
        if process is not None:
            process.kill()
            process.wait()


def main() -> int:
    from anytime.data import photos

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    photos.add_set_arguments(p)
    p.add_argument("--executions", default="upfront,progressive")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rows", default=",".join(f"{a}:{b}" for a, b in ROWS),
                   help="LOAD:K pairs, budget K x D at LOAD x T (default: %(default)s)")
    p.add_argument("--busy", action="store_true", help="add the row with one core busy")
    p.add_argument("--gateway-args", default="", help="extra `anytime serve` flags for every stack")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:INSTANCES:THREADS:SERVE ARGS",
                   help="also an upfront stack, on a copy of the repository whose exit models run INSTANCES instances "
                        "of THREADS ONNX Runtime threads (empty: as exported), with these `anytime serve` flags; e.g. "
                        "'1thread:2:1:--slots 2' or 'margin5:::--margin-ms 5' (repeatable)")
    p.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                   help="also an upfront gateway run from another checkout's package (e.g. a git worktree of an older "
                        "commit), as execution 'baseline'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = p.parse_args()

    from anytime.clients.detect import image_bytes
    from anytime.clients.loadgen import open_dataset
    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.export.ensure import ensure_exported
    from anytime.export.repository import configure_exits
    from anytime.serving.stack import ServingStack

    sources = photos.set_sources(args)
    executions = args.executions.split(",")
    ensure_exported(args.repository, DEFAULT_CHECKPOINT, stages="progressive" in executions)
    extra = tuple(args.gateway_args.split())
    stacks = {e: ServingStack(args.repository, gateway_args=("--execution", e, *extra)) for e in executions}
    for variant in args.variant:
        label, instances, threads, flags = variant.split(":", 3)
        repository = args.repository
        if instances or threads:
            repository = args.out / f"repository-{label}"
            shutil.rmtree(repository, ignore_errors=True)
            shutil.copytree(args.repository, repository)
            configure_exits(repository, instances=int(instances) if instances else None,
                            intra_op_threads=int(threads) if threads else None)
        executions.append(label)
        stacks[label] = ServingStack(repository, gateway_args=("--execution", "upfront", *flags.split(), *extra))
    if args.baseline:
        executions.append("baseline")
        stacks["baseline"] = ServingStack(args.repository, gateway_args=("--execution", "upfront"))
    results = []
    try:
        for e, s in stacks.items():
            with _pythonpath(args.baseline if e == "baseline" else None):
                s.start()
        for name, source in sources.items():
            dataset = open_dataset(source)
            payloads = [image_bytes(dataset.image_dir / dataset.coco.imgs[i]["file_name"]) for i in dataset.ids]
            t, d = measure_t_and_d(stacks[executions[0]].address, payloads)
            print(f"\n{name}: T {t:.1f} requests/s, D {d:.1f} ms (on {executions[0]})", flush=True)
            chosen = [tuple(float(x) for x in pair.split(":")) for pair in args.rows.split(",") if pair]
            rows = [(load, k, False) for load, k in chosen] + ([(*BUSY_ROW, True)] if args.busy else [])
            for i, (load, k, busy) in enumerate(rows):
                order = executions if i % 2 == 0 else executions[::-1]
                with neighbour(busy):
                    for e in order:
                        r = run_row(stacks[e].address, dataset, k * d, load * t, min(args.requests, len(dataset)),
                                    args.seed + i)
                        r.update(set=name, execution=e, load=load, budget_D=k, busy=busy, T=t, D=d)
                        results.append(r)
                        print(f"  {e:11s} {100 * load:3.0f}% load, {k:g}D = {k * d:5.1f} ms{' busy' if busy else ''}: "
                              f"met {100 * r['budget_met_rate']:5.1f}%, refused at once {r['refused_at_once']}, "
                              f"admitted in time {100 * (r['admitted_in_time_rate'] or 0):5.1f}%, late {r['late']}, "
                              f"exits {r['exits']}, {r['outcomes']}", flush=True)
    finally:
        for s in stacks.values():
            s.stop()
    print("\n| set | load, budget | " + " | ".join(f"{e}: met / admitted in time / refused at once" for e in executions)
          + " |")
    print("|---|---|" + "---|" * len(executions))
    keys = sorted({(r["set"], r["load"], r["budget_D"], r["busy"]) for r in results},
                  key=lambda k: (k[0], k[3], -k[2], k[1]))
    for key in keys:
        cells = []
        for e in executions:
            r = next(x for x in results if (x["set"], x["load"], x["budget_D"], x["busy"]) == key and x["execution"] == e)
            cells.append(f"{100 * r['budget_met_rate']:.1f}% / {100 * (r['admitted_in_time_rate'] or 0):.1f}% / "
                         f"{r['refused_at_once']}")
        label = f"{100 * key[1]:.0f}%, {key[2]:g}D{' (one core busy)' if key[3] else ''}"
        print(f"| {key[0]} | {label} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_goals.json").write_text(json.dumps({"rows": results, "when": time.time()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
