"""Where do the requests of a trace end, by execution mode, through the real gateway and Triton?

    .venv/bin/python benchmarks/trace_outcomes.py [--modes "progressive, no batching;upfront"] [--loads 0.5,0.8]

For each mode and load it runs the trace of ``benchmarks/progressive.py`` (Poisson arrivals, budgets uniform in
[2 x p95(exit 1), 4 x p95(deepest)] of the upfront profile, load in % of the upfront gateway's capacity at the
deepest exit) and prints: met (of all requests), met of admitted (not refused at once), exits used, and every way
a request failed, grouped by status and message, with the budgets of the admitted requests that got no answer.
It is the tool that tells a refusal at admission from an admitted request given up later, and which part (the
gateway or the progressive model) gave up. Modes: the labels of ``benchmarks/progressive.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import progressive as bench  # noqa: E402  (benchmarks/progressive.py: the modes, stacks and repository variants)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--modes", default="progressive, no batching;upfront", help="';'-separated mode labels")
    ap.add_argument("--loads", default="0.5,0.8")
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(";")]
    unknown = [m for m in modes if m not in bench.MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}: choose from {list(bench.MODES)}")

    from anytime.clients.loadgen import open_dataset, run_setting
    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.ensure import ensure_exported

    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    dataset = open_dataset(ensure_default(DEFAULT_DATA_DIR))
    with bench.stack_for(args.repository, "upfront") as s:
        p50, _, capacity, budgets = bench.trace_settings(s.address)
    print(f"capacity {capacity:.1f}/s at exit {max(p50)}, budgets {budgets} ms, {args.requests} requests per row")
    work = Path(tempfile.mkdtemp(prefix="anytime-outcomes-"))
    try:
        for mode in modes:
            execution, batch = bench.MODES[mode]
            repo = bench.repository_variant(args.repository, work, batch)
            with bench.stack_for(repo, execution) as s:
                for load in (float(x) for x in args.loads.split(",")):
                    res = asyncio.run(run_setting(s.address, dataset, budgets, load * capacity, args.requests,
                                                  seed=int(load * 1000), progress=False))
                    report(mode, load, res.records)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(mode: str, load: float, records) -> None:
    admitted = bench.admitted_records(records)
    met = sum(r.budget_met for r in records) / len(records)
    met_admitted = sum(r.budget_met for r in admitted) / max(len(admitted), 1)
    exits = sorted(collections.Counter(r.exit for r in records if r.status == "OK").items())
    late = sum(1 for r in records if r.status == "OK" and not r.budget_met)
    print(f"\n{mode} @ {load:.0%}: met {met:.1%}, of admitted {met_admitted:.1%} ({len(admitted)}), answered late "
          f"{late}, exits used {' '.join(f'{e}:{n}' for e, n in exits)}")
    failures = collections.Counter((r.status, _message(r.error)) for r in records if r.status != "OK")
    for (status, message), n in failures.most_common():
        print(f"  {n:4d}  {status:<18} {message}")
    lost = [r.budget_ms for r in admitted if r.status != "OK"]
    if lost:
        print("  admitted without an answer: budgets p10/p50/p90 "
              + "/".join(f"{x:.1f}" for x in np.percentile(lost, [10, 50, 90])) + " ms")


def _message(error: str) -> str:
    """The message without what changes from run to run (the endpoint's address, the numbers of a shed)."""
    text = error.split(": ", 1)[1] if error.startswith("inference server ") else error
    return re.sub(r"\d+(\.\d+)?", "N", text)[:110]


if __name__ == "__main__":
    sys.exit(main())
