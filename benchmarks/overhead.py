"""Where does an idle request's time go, from the client through the gateway and Triton to ONNX Runtime and back?

Where an idle request's time goes: client -> gateway (decode, letterbox, scheduler) -> tritonclient -> Triton ->
python-backend stub -> ONNX Runtime, one request at a time, each part measured on its own in one run.

    .venv/bin/python benchmarks/overhead.py [--exit 4] [--runs 200]

The image is a PNG of the default benchmark's val split (generated if absent), the model the embedded default
(exported if the repository is empty). Parts, p50 and p95 in ms:

- ``onnxruntime``: the exit's model.onnx in this process on the letterboxed pixels (ORT defaults);
- ``onnxruntime (stub settings)``: the same with the settings Triton's model.py uses;
- ``decode``, ``letterbox``: the gateway's preprocessing, on this thread;
- ``scheduler``: admit + mark_ready + dispatch + complete for one request on an idle scheduler;
- ``triton (server compute)``: Triton's own statistics, time inside the model per request (stub + ORT);
- ``tritonclient -> triton``: a gRPC call to Triton from this process, pixels in, detections out;
- ``client -> gateway``: the whole path, on this client's clock, and the gateway's own split of it.

The last line compares end to end with bare ONNX Runtime (the issue's goal: at most 2 ms more).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, runs: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--exit", type=int, default=None, help="exit to time (default: the deepest)")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()

    import grpc
    import onnxruntime as ort
    import tritonclient.grpc as tc

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.ensure import ensure_exported
    from anytime.export.repository import read_manifest
    from anytime.imaging import decode, letterbox
    from anytime.serving.latency import LatencyProfile
    from anytime.serving.scheduler import Request, Scheduler
    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc
    from anytime.serving.stack import ServingStack

    data = args.data or ensure_default(DEFAULT_DATA_DIR)
    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    manifest = read_manifest(args.repository)
    exits = [e["exit"] for e in manifest["exits"]]
    exit = args.exit or exits[-1]
    model_name = next(e["model"] for e in manifest["exits"] if e["exit"] == exit)
    size = int(manifest["image_size"])
    png = sorted((Path(data) / "val").glob("*.png"))[0].read_bytes()
    image = decode(png)
    pixels = letterbox(image, size)[0][None]
    rows = []

    def row(name, ms):
        rows.append((name, float(np.percentile(ms, 50)), float(np.percentile(ms, 95))))
        print(f"  {name}: p50 {rows[-1][1]:.2f} ms", file=sys.stderr, flush=True)

    onnx_path = str(args.repository / model_name / "1" / "model.onnx")
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    row("onnxruntime", timed(lambda: session.run(None, {"images": pixels}), args.runs))
    opts = ort.SessionOptions()  # what triton_python_model.py does with the exported config's parameters
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    stub_like = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
    row("onnxruntime (stub settings: no spinning)", timed(lambda: stub_like.run(None, {"images": pixels}), args.runs))
    row("decode (PNG)", timed(lambda: decode(png), args.runs))
    row("letterbox", timed(lambda: letterbox(image, size), args.runs))

    prof = LatencyProfile.from_samples({e: [10.0] * 20 for e in exits})
    sched = Scheduler({"t": prof})
    clock = [0.0]

    def one_decision():
        clock[0] += 1.0
        r = Request(deadline=clock[0] + 1.0, arrival=clock[0])
        sched.admit(r, clock[0])
        sched.mark_ready(r, clock[0])
        (a,), _ = sched.dispatch(clock[0])
        sched.complete(a, clock[0] + 0.01, 0.01)
    row("scheduler (admit, ready, dispatch, complete)", timed(one_decision, args.runs))

    with ServingStack(args.repository, gateway_args=("--execution", "upfront")) as stack:  # the per-exit path
        triton = tc.InferenceServerClient(stack.tritons[0].grpc_url)
        inp = tc.InferInput("images", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        outs = [tc.InferRequestedOutput(n) for n in ("boxes", "scores", "labels", "num_detections")]
        stats0 = triton.get_inference_statistics(model_name).model_stats[0].inference_stats
        direct = timed(lambda: triton.infer(model_name, [inp], outputs=outs), args.runs)
        stats1 = triton.get_inference_statistics(model_name).model_stats[0].inference_stats
        n = stats1.success.count - stats0.success.count
        compute = (stats1.compute_infer.ns - stats0.compute_infer.ns) / n / 1e6
        queue = (stats1.queue.ns - stats0.queue.ns) / n / 1e6
        rows.append(("triton (server compute, mean)", compute, float("nan")))
        rows.append(("triton (server queue, mean)", queue, float("nan")))
        row("tritonclient -> triton (gRPC)", direct)
        with grpc.insecure_channel(stack.address) as ch:
            stub = pb_grpc.DetectorStub(ch)
            request = pb.DetectRequest(encoded=png, budget_ms=10_000, min_exit=exit, max_exit=exit)
            server_side = []

            def call():
                r = stub.Detect(request)
                server_side.append((r.timing.queue_ms, r.timing.inference_ms, r.timing.total_ms))
            e2e = timed(call, args.runs)
            server = np.asarray(server_side[-args.runs:])
            row("gateway: arrival -> dispatch (decode, letterbox, scheduler)", server[:, 0])
            row("gateway: dispatch -> answer (tritonclient aio -> triton)", server[:, 1])
            row("gateway: total (its own clock)", server[:, 2])
            row("client -> gateway -> client (end to end)", e2e)
    print(f"\nIdle path of one request, exit {exit} of the default model, {args.runs} runs "
          f"(one at a time; PNG {len(png)} bytes, {image.width}x{image.height})")
    print(f"{'part':<62} {'p50 ms':>8} {'p95 ms':>8}")
    for name, p50, p95 in rows:
        print(f"{name:<62} {p50:>8.2f} {p95:>8.2f}")
    bare = rows[0][1]
    print(f"\nend to end - bare ONNX Runtime (p50): {rows[-1][1] - bare:+.2f} ms (goal: at most +2.00 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
