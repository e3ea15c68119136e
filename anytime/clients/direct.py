"""The simplest peers of the gateway: Triton's exit models called directly, as a careful user would.

A serving feature earns its place against what a user would run instead of it. Without the gateway, a user calls
``anytime_exit{k}`` with tritonclient: decodes and letterboxes each photo (this package's own ``open_image`` and
``letterbox``, in a pool of 2 threads), sends every request as its own asyncio task from its arrival with no cap on
calls in flight (so Triton's dynamic batcher batches them), and sets the call's ``client_timeout`` to the time left.

Policies:

- ``exit k``: always exit k (at the model's own input size);
- ``option SIZE/EXIT``: always that option (the image letterboxed to SIZE), such as the cheapest one;
- ``slack``: after decoding, the deepest exit whose idle p95 (``idle_p95``) fits the time left, else exit 1;
- ``slack over options``: at arrival (the size must be known before decoding), the most expensive option whose idle
  p95 of decoding plus the call (``idle_p95_options``) fits the time left, else the cheapest.

``run_trace`` drives any sender, the gateway's included (``gateway_sender``), on one clock: each request's time
starts at its *planned* arrival, so a client that falls behind pays for it. Records are ``loadgen.RequestRecord``,
so ``loadgen.evaluate_results`` and the benchmarks read them alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Awaitable, Callable

import grpc
import numpy as np

from anytime.clients.loadgen import DEADLINE_SLACK_MS, RequestRecord, coco_results, quiet_gc
from anytime.options import from_manifest
from anytime.imaging import boxes_to_original, open_image
from anytime.serving.gateway import GatewayConfig, prepare
from anytime.serving.measure import infer_exit
# send(k, record, seconds left) -> fills the record (status, exit, detections); its clock is run_trace's
Sender = Callable[[int, RequestRecord, float], Awaitable[None]]


def coco_detections(outputs: dict, scale: float, size: tuple[int, int], cat_ids: list[int], image_id: int,
                    row: int = 0) -> list[dict]:
    """One image's detections of an exit model's outputs, in the original image's pixels, as COCO results."""
    n = int(np.asarray(outputs["num_detections"]).reshape(-1)[row])
    boxes, keep = boxes_to_original(outputs["boxes"][row, :n].astype(np.float64), scale, *size)
    scores, labels = outputs["scores"][row, :n], outputs["labels"][row, :n]
    return [{"image_id": image_id, "category_id": int(cat_ids[int(l)]),
             "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
             "score": round(float(s), 5)}
            for b, s, l, k in zip(boxes.tolist(), scores.tolist(), labels.tolist(), keep.tolist()) if k]


class DirectClient:
    """Triton's exit models through tritonclient's asyncio gRPC client, decoding in a pool of threads."""

    def __init__(self, url: str, manifest: dict, decode_threads: int = 2):
        import tritonclient.grpc.aio as triton_aio

        self.url = url
        self.manifest = manifest
        self.image_size = int(manifest["image_size"])
        self.models = {int(e["exit"]): e["model"] for e in manifest["exits"]}
        self.exits = sorted(self.models)
        self.options = {o.name: o for o in from_manifest(manifest)}  # cheapest first
        self.cat_ids = list(manifest.get("cat_ids") or range(1, len(manifest["class_names"]) + 1))
        self.client = triton_aio.InferenceServerClient(url)
        self.pool = concurrent.futures.ThreadPoolExecutor(decode_threads, thread_name_prefix="peer-decode")

    async def close(self) -> None:
        await self.client.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, data: bytes, size: int | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Encoded bytes -> model input [1, 3, S, S] (S: ``size``, default the model's), letterbox scale, original
        (h, w): the gateway's transform."""
        return prepare(open_image(data), size or self.image_size, GatewayConfig.max_image_pixels)

    async def decode(self, data: bytes, size: int | None = None):
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.prepare, data, size)

    async def infer(self, exit: int, pixels: np.ndarray, timeout: float = 30.0) -> dict:
        return await infer_exit(self.client, self.models[exit], pixels, timeout)

    async def idle_p95(self, pixels: np.ndarray, warmup: int = 5, runs: int = 12) -> dict[int, float]:
        """Seconds: the p95 of ``runs`` idle batch-1 calls per exit after ``warmup`` (what slack direct plans with)."""
        out = {}
        for exit in self.exits:
            times = []
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                await self.infer(exit, pixels)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            out[exit] = float(np.percentile(times, 95))
        return out

    async def idle_p95_options(self, payload: bytes, warmup: int = 3, runs: int = 12) -> dict[str, float]:
        """Seconds: per option, the p95 of ``runs`` idle calls of decoding ``payload`` at its size and calling it
        (what slack over options plans with: it chooses before decoding)."""
        out = {}
        for name, o in self.options.items():
            times = []
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                pixels, _, _ = await self.decode(payload, o.image_size)
                await self.infer(o.exit, pixels)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            out[name] = float(np.percentile(times, 95))
        return out

    def sender(self, payloads: list[bytes], exit: int | None = None, p95: dict[int, float] | None = None,
               option: str | None = None, option_p95: dict[str, float] | None = None) -> Sender:
        """A sender of ``exit`` always, of ``option`` always, the slack policy over ``p95`` (exits at the model's
        size), or with ``option_p95`` the slack policy over every option."""
        if exit is None and option is None and not p95 and not option_p95:
            raise ValueError("the slack policy needs each exit's (or option's) idle p95")
        if option is not None and option not in self.options:
            raise ValueError(f"option {option!r} is not served; the options are {', '.join(self.options)}")

        async def send(k: int, record: RequestRecord, left) -> None:
            chosen, side = exit, None
            if option is not None:
                chosen, side = self.options[option].exit, self.options[option].image_size
            elif option_p95:  # the size is chosen before decoding: on the time left at arrival
                names = list(self.options)
                fits = [n for n in names if option_p95[n] <= left()]
                o = self.options[fits[-1] if fits else names[0]]
                chosen, side = o.exit, o.image_size
            pixels, scale, size = await self.decode(payloads[k], side)
            remaining = left()
            if chosen is None:
                fits = [e for e in self.exits if p95[e] <= remaining]
                chosen = fits[-1] if fits else self.exits[0]
            if remaining <= 0:
                record.status, record.error = "DEADLINE_EXCEEDED", "no time left after decoding"
                return
            try:
                outputs = await self.infer(chosen, pixels, timeout=remaining)  # Triton cancels it after that
            except Exception as e:  # tritonclient raises InferenceServerException for timeouts and errors alike
                status = getattr(e, "status", lambda: None)()
                record.status = "DEADLINE_EXCEEDED" if status and "DEADLINE" in str(status) else (
                    str(status) if status else type(e).__name__)
                record.error = str(e)[:200]
                return
            record.status, record.exit, record.image_size = "OK", chosen, side or self.image_size
            record.detections = coco_detections(outputs, scale, size, self.cat_ids, record.image_id)

        return send


def gateway_sender(stub, payloads: list[bytes]) -> Sender:
    """The gateway's sender: the encoded photo, with the time left as its budget (what a careful user sends) and a
    gRPC deadline a second beyond, so that a late answer still comes back and is counted late."""
    from anytime.serving.api import anytime_pb2 as pb

    async def send(k: int, record: RequestRecord, left) -> None:
        remaining = left()
        request = pb.DetectRequest(encoded=payloads[k], budget_ms=max(remaining * 1e3, 1e-3), request_id=str(k))
        try:
            response = await stub.Detect(request, timeout=remaining + DEADLINE_SLACK_MS / 1e3)
        except grpc.aio.AioRpcError as e:
            record.status, record.error = e.code().name, e.details() or ""
            return
        record.status, record.exit = "OK", int(response.exit)
        record.image_size = int(response.image_size) or None
        record.server_budget_met = bool(response.budget_met)
        record.detections = coco_results(response, record.image_id)

    return send


async def run_trace(records: list[RequestRecord], send: Sender) -> float:
    """Send every planned request at its arrival, each its own task, never waiting for answers; returns the wall
    seconds. A request's clock starts at its planned arrival: ``latency_ms`` and ``budget_met`` are measured from
    there, and its sender is given the time left (a function: seconds until its deadline, when called)."""
    loop = asyncio.get_running_loop()

    async def one(k: int, record: RequestRecord, planned: float) -> None:
        record.sent_s = loop.time() - start
        deadline = planned + record.budget_ms / 1e3
        try:
            await send(k, record, lambda: deadline - loop.time())
        except Exception as e:  # a sender's bug is a failed request, not a lost trace
            record.status, record.error = "CLIENT_ERROR", f"{type(e).__name__}: {e}"
        record.elapsed_ms = (loop.time() - planned) * 1e3
        if record.status == "OK":
            record.latency_ms = record.elapsed_ms
            record.budget_met = record.latency_ms <= record.budget_ms

    with quiet_gc():
        start = loop.time()
        tasks = []
        for k, record in enumerate(records):
            planned = start + record.arrival_s
            delay = planned - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, record, planned)))
        await asyncio.gather(*tasks)
    return loop.time() - start
