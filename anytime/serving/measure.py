"""Measured latency of every exit: through Triton (what the scheduler plans with), ONNX Runtime and PyTorch.

Each backend is timed on the same random uint8 batches, one backend at a time, so the ratios between them come
from one run on one machine. Results are quantiles in milliseconds per (exit, batch size); batch-1 samples are
kept so the scheduler and the benchmarks can replay the measured distribution. ``time_triton`` is the one timing
of Triton calls: ``anytime profile`` and the gateway's start-up calibration both use it.
"""

from __future__ import annotations

import asyncio
import inspect
import platform
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")

KEEP_SAMPLES = 200


@dataclass
class ProfileSettings:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    runs: int = 30  # timed calls per (backend, exit, batch)
    warmup: int = 5
    concurrency: int = 8  # in-flight batch-1 requests for the dynamic-batching throughput test
    backends: tuple[str, ...] = ("triton", "onnxruntime", "pytorch")


@dataclass
class Timings:
    """Latency samples (seconds) per exit and batch size for one backend."""

    samples: dict[int, dict[int, list[float]]] = field(default_factory=dict)

    def add(self, exit: int, batch: int, seconds: list[float]) -> None:
        self.samples.setdefault(exit, {})[batch] = seconds

    def summary(self) -> dict:
        out = {}
        for exit, per_batch in sorted(self.samples.items()):
            out[exit] = {}
            for batch, s in sorted(per_batch.items()):
                ms = np.asarray(s) * 1e3
                stats = {q: float(np.percentile(ms, int(q[1:]))) for q in ("p50", "p95", "p99")}
                stats["mean"] = float(ms.mean())
                stats["images_per_s"] = float(batch / ms.mean() * 1e3)
                if batch == 1:
                    stats["samples_ms"] = [round(float(x), 3) for x in ms[:KEEP_SAMPLES]]
                out[exit][batch] = stats
        return {"exits": out}


def _batch(size: int, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)


def profile_onnxruntime(repository, manifest: dict, settings: ProfileSettings, progress=print) -> Timings:
    import onnxruntime as ort

    t = Timings()
    size = manifest["image_size"]
    for e in manifest["exits"]:
        session = ort.InferenceSession(str(repository / e["model"] / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        for b in settings.batch_sizes:
            x = _batch(size, b)
            t.add(e["exit"], b, asyncio.run(time_calls(lambda: session.run(None, {"images": x}), settings.runs,
                                                       settings.warmup)))
        progress(f"onnxruntime: exit {e['exit']} done")
    return t


def profile_pytorch(model, manifest: dict, settings: ProfileSettings, progress=print) -> Timings:
    import torch

    t = Timings()
    size = manifest["image_size"]
    model = model.eval()
    for e in manifest["exits"]:
        for b in settings.batch_sizes:
            x = torch.from_numpy(_batch(size, b))

            def run():
                with torch.inference_mode():
                    model(x, exit=e["exit"])

            t.add(e["exit"], b, asyncio.run(time_calls(run, settings.runs, settings.warmup)))
        progress(f"pytorch: exit {e['exit']} done")
    return t


async def infer_exit(client, model: str, pixels: np.ndarray, timeout: float | None = None) -> dict[str, np.ndarray]:
    """One call of an exported exit through tritonclient's asyncio gRPC client: uint8 images in, detections out."""
    import tritonclient.grpc.aio as triton_aio

    inp = triton_aio.InferInput("images", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels)
    result = await client.infer(model, [inp], outputs=[triton_aio.InferRequestedOutput(n) for n in OUTPUT_NAMES],
                                client_timeout=timeout)
    return {n: result.as_numpy(n) for n in OUTPUT_NAMES}


async def stream_progressive(client, model: str, pixels: np.ndarray, budget_ms: float, exits: tuple[int, int],
                             every_exit: bool = False, on_first_stage: Callable[[], None] | None = None):
    """One request to the progressive model (a decoupled model: a stream of responses) through tritonclient's
    asyncio gRPC client: yields (exit, outputs) as the model sends them and ends after its final response.

    ``exits``: (min, max) exit wanted (max 0: the deepest). Without ``every_exit`` the model computes only the head
    of the exit it answers with (and of any it needs as insurance), so fewer exits may come than a stream of
    refinements would see. ``on_first_stage`` is called when the model says the request's first stage is done.
    Leaving early (the caller stops iterating) cancels the stream, and with it the request's remaining stages."""
    import tritonclient.grpc.aio as triton_aio

    inputs = [triton_aio.InferInput("images", list(pixels.shape), "UINT8"),
              triton_aio.InferInput("budget_ms", [1], "FP64"), triton_aio.InferInput("exits", [2], "INT32"),
              triton_aio.InferInput("every_exit", [1], "INT32")]
    inputs[0].set_data_from_numpy(pixels)
    inputs[1].set_data_from_numpy(np.array([budget_ms], np.float64))
    inputs[2].set_data_from_numpy(np.array(exits, np.int32))
    inputs[3].set_data_from_numpy(np.array([int(every_exit)], np.int32))

    async def requests():
        yield {"model_name": model, "inputs": inputs}
    stream = client.stream_infer(requests())
    try:
        async for result, error in stream:
            if error is not None:
                raise error
            exit, final = int(result.as_numpy("exit")[0]), bool(result.as_numpy("final")[0])
            if exit > 0:
                yield exit, {n: result.as_numpy(n) for n in OUTPUT_NAMES}
            elif not final and on_first_stage is not None:  # progress: the request's first stage is done
                on_first_stage()
            if final:  # (exit 0 and final: the end marker of a request stopped before its deepest exit)
                return
    finally:
        stream.cancel()  # a no-op once the stream ended; otherwise the model drops the request's stages


async def time_calls(call: Callable[[], Awaitable | object], runs: int, warmup: int) -> list[float]:
    """Seconds per call of ``call`` (a coroutine function or a plain one), one at a time, after ``warmup``
    untimed calls (caches, thread pools). The one timing loop of the project: Triton, ONNX Runtime and PyTorch
    are timed by it, here and in the gateway's calibration."""
    for _ in range(warmup):
        if inspect.isawaitable(r := call()):
            await r
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if inspect.isawaitable(r := call()):
            await r
        out.append(time.perf_counter() - t0)
    return out


async def time_triton(client, models: dict[int, str], image_size: int | dict[int, int], runs: int, warmup: int = 5,
                      batch: int = 1, timeout: float = 30.0) -> dict[int, list[float]]:
    """Seconds per call of every exit (``models``: exit -> Triton model name) at one batch size; ``image_size``
    one size for all, or each one's (the gateway's options: id -> size)."""
    sizes = image_size if isinstance(image_size, dict) else dict.fromkeys(models, image_size)
    inputs = {size: _batch(size, batch) for size in set(sizes.values())}
    return {exit: await time_calls(lambda m=name, x=inputs[sizes[exit]]: infer_exit(client, m, x, timeout), runs,
                                   warmup)
            for exit, name in sorted(models.items())}


def profile_triton(url: str, manifest: dict, settings: ProfileSettings, progress=print) -> tuple[Timings, dict]:
    """Latency per (exit, batch) with client-side batches, and throughput of concurrent batch-1 requests
    (Triton's dynamic batcher merges them) against sequential batch-1 requests."""
    return asyncio.run(_profile_triton(url, manifest, settings, progress))


async def _profile_triton(url: str, manifest: dict, settings: ProfileSettings, progress) -> tuple[Timings, dict]:
    import tritonclient.grpc.aio as triton_aio

    client = triton_aio.InferenceServerClient(url)
    size = manifest["image_size"]
    t, dynamic = Timings(), {}
    try:
        for e in manifest["exits"]:
            model = {e["exit"]: e["model"]}
            for b in settings.batch_sizes:
                t.add(e["exit"], b, (await time_triton(client, model, size, settings.runs, settings.warmup, b))[e["exit"]])
            # Dynamic batching: `concurrency` batch-1 requests kept in flight at once.
            x1, n = _batch(size, 1), settings.runs * 2
            pending = asyncio.Semaphore(settings.concurrency)

            async def one():
                async with pending:
                    await infer_exit(client, e["model"], x1)
            await asyncio.gather(*(one() for _ in range(settings.concurrency)))  # warm up
            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            dynamic[e["exit"]] = {"concurrency": settings.concurrency, "images_per_s": n / (time.perf_counter() - t0)}
            progress(f"triton: exit {e['exit']} done")
    finally:
        await client.close()
    return t, dynamic


def run_profile(repository, settings: ProfileSettings, triton_url: str | None = None, model=None,
                progress=print) -> dict:
    """Measure every requested backend; returns the manifest's ``latency_profile`` entry."""
    from pathlib import Path

    from anytime.export.repository import read_manifest

    repository = Path(repository)
    manifest = read_manifest(repository)
    result = {"measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": _machine(),
              "runs": settings.runs, "batch_sizes": list(settings.batch_sizes)}
    if "triton" in settings.backends:
        if triton_url is None:
            from anytime.serving.triton import TritonServer, free_ports

            http, grpc_port, metrics = free_ports(3)
            with TritonServer(repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as server:
                timings, dynamic = profile_triton(server.grpc_url, manifest, settings, progress)
        else:
            timings, dynamic = profile_triton(triton_url, manifest, settings, progress)
        result["triton"] = {**timings.summary(), "dynamic_batching": dynamic}
    if "onnxruntime" in settings.backends:
        result["onnxruntime"] = profile_onnxruntime(repository, manifest, settings, progress).summary()
    if "pytorch" in settings.backends and model is not None:
        result["pytorch"] = profile_pytorch(model, manifest, settings, progress).summary()
    return result


def _machine() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}


def format_table(profile: dict) -> str:
    """Per exit at batch 1: p50/p95 for each backend and the ratios; then Triton throughput by batch."""
    backends = [b for b in ("pytorch", "onnxruntime", "triton") if b in profile]
    exits = sorted(int(e) for e in profile[backends[0]]["exits"])
    head = f"{'exit':>4} " + " ".join(f"{b + ' p50/p95 ms':>24}" for b in backends)
    ratio_cols = []
    if "pytorch" in profile and "onnxruntime" in profile:
        ratio_cols.append(("pytorch", "onnxruntime"))
    if "onnxruntime" in profile and "triton" in profile:
        ratio_cols.append(("triton", "onnxruntime"))
    head += "".join(f"  {a}/{b} p50" for a, b in ratio_cols)
    lines = ["Latency per exit at batch 1", head]
    for e in exits:
        cells = []
        for b in backends:
            s = _stats(profile[b], e, 1)
            cells.append(f"{s['p50']:>11.2f} / {s['p95']:>8.2f}  ")
        ratios = "".join(f"  {_stats(profile[a], e, 1)['p50'] / _stats(profile[b], e, 1)['p50']:>{len(a) + len(b) + 5}.2f}"
                         for a, b in ratio_cols)
        lines.append(f"{e:>4} " + " ".join(f"{c:>24}" for c in cells) + ratios)
    if "triton" in profile:
        tri = profile["triton"]
        batches = sorted(int(b) for b in tri["exits"][_key(tri["exits"], exits[0])])
        lines += ["", "Triton throughput (images/s)",
                  f"{'exit':>4} " + " ".join(f"{'batch ' + str(b):>10}" for b in batches)
                  + f" {'dyn. batching':>14} {'best/b1':>8}"]
        for e in exits:
            per = [_stats(tri, e, b)["images_per_s"] for b in batches]
            dyn = tri.get("dynamic_batching", {})
            d = dyn.get(e, dyn.get(str(e), {})).get("images_per_s", float("nan"))
            lines.append(f"{e:>4} " + " ".join(f"{v:>10.1f}" for v in per) + f" {d:>14.1f} {max(per + [d]) / per[0]:>8.2f}")
    return "\n".join(lines)


def _key(d: dict, k):
    return k if k in d else str(k)


def _stats(backend: dict, exit: int, batch: int) -> dict:
    per_batch = backend["exits"][_key(backend["exits"], exit)]
    return per_batch[_key(per_batch, batch)]


def plot(profile: dict, path) -> None:
    """Latency against exit: Triton per batch size (left), backends at batch 1 (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    tri = profile.get("triton")
    if tri:
        exits = sorted(int(e) for e in tri["exits"])
        for b in sorted(int(b) for b in tri["exits"][_key(tri["exits"], exits[0])]):
            left.plot(exits, [_stats(tri, e, b)["p50"] for e in exits], marker="o", label=f"batch {b}")
        left.set(title="Triton p50 latency by batch size", xlabel="exit", ylabel="ms", xticks=exits)
        left.legend()
    for b in ("pytorch", "onnxruntime", "triton"):
        if b in profile:
            exits = sorted(int(e) for e in profile[b]["exits"])
            right.errorbar(exits, [_stats(profile[b], e, 1)["p50"] for e in exits],
                           yerr=[[0] * len(exits), [_stats(profile[b], e, 1)["p95"] - _stats(profile[b], e, 1)["p50"]
                                                    for e in exits]], marker="o", capsize=3, label=b)
    right.set(title="batch 1: p50 (bar to p95)", xlabel="exit", ylabel="ms")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
