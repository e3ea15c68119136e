"""Where does a progressive request to the deepest exit spend its time, alone, by Triton's own metrics?

    .venv/bin/python benchmarks/stage_breakdown.py [--runs 100] [--stacks 2]

For each of ``--stacks`` fresh serving stacks (Triton and the gateway, ``--execution progressive``), it sends
``--runs`` requests one at a time to the deepest exit (after 10 to warm up) and prints, per step that ran, its
calls, the mean seconds in its ONNX graph (``anytime_stage_graph_seconds``) and in the whole call as the worker
thread spends it (``anytime_stage_call_seconds``: the decision, the feed, the graph, queueing the responses); then,
per request, the graphs, the calls, and what the client waited beyond the calls (the gateway, the way to Triton
and back, the responses). It is the tool that says which part of the batch-1 overhead is the model's
(``benchmarks/progressive.py --parts overhead`` gives the ratio to the monolithic exit).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import progressive as bench  # noqa: E402  (benchmarks/progressive.py: the gateway's model info)

SERIES = ("anytime_stage_runs", "anytime_stage_graph_seconds", "anytime_stage_call_seconds")
WARMUP = 10  # requests sent before the timed ones; Triton's metrics count them too


def snapshot(url: str, stages: int) -> dict:
    from anytime.testing import scrape

    return {(part, k): tuple(scrape(url, name, stage=str(k), part=part) for name in SERIES)
            for part in ("features", "head") for k in range(1, stages + 1)}


async def one_at_a_time(address: str, data: bytes, exit: int, runs: int) -> np.ndarray:
    """Client-side ms of ``runs`` requests to ``exit`` through the gateway at ``address``, one at a time."""
    import grpc

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc

    from anytime.serving.measure import time_calls

    request = pb.DetectRequest(encoded=data, budget_ms=10_000, min_exit=exit, max_exit=exit)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorStub(channel)

        async def detect():
            r = await stub.Detect(request)
            assert r.exit == exit, r.exit

        return np.asarray(await time_calls(detect, runs, WARMUP)) * 1e3


def main() -> int:
    from anytime.clients.loadgen import open_dataset
    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.ensure import ensure_exported
    from anytime.serving.stack import ServingStack

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--stacks", type=int, default=2)
    args = ap.parse_args()
    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    dataset = open_dataset(ensure_default(DEFAULT_DATA_DIR))
    png = (dataset.image_dir / dataset.coco.imgs[dataset.ids[0]]["file_name"]).read_bytes()
    for n in range(args.stacks):
        with ServingStack(args.repository, gateway_args=("--execution", "progressive")) as stack:
            deepest = max(bench.model_info(stack.address).exits)
            url = stack.tritons[0].metrics_url
            time.sleep(0.5)  # the metrics of the gateway's calibration are written
            before = snapshot(url, deepest)
            ms = asyncio.run(one_at_a_time(stack.address, png, deepest, args.runs))
            time.sleep(0.5)
            after = snapshot(url, deepest)
        requests = args.runs + WARMUP
        graphs = calls = 0.0
        print(f"stack {n + 1}: {args.runs} requests to exit {deepest}, client p50 {np.percentile(ms, 50):.2f} ms, "
              f"mean {ms.mean():.2f} ms")
        print(f"  {'step':10} {'calls':>6} {'graph ms':>9} {'call ms':>8} {'beyond':>7}")
        for (part, k), b in after.items():
            runs = b[0] - before[(part, k)][0]
            if not runs:
                continue
            graph = (b[1] - before[(part, k)][1]) / runs * 1e3
            call = (b[2] - before[(part, k)][2]) / runs * 1e3
            graphs += graph * runs / requests
            calls += call * runs / requests
            print(f"  {part + ' ' + str(k):10} {runs:>6.0f} {graph:>9.2f} {call:>8.2f} {call - graph:>+7.2f}")
        print(f"  per request: graphs {graphs:.2f} ms, calls {calls:.2f} ms (+{calls - graphs:.2f}), "
              f"the client's mean beyond the calls {ms.mean() - calls:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
