"""The anytime gateway: a gRPC ``Detector`` service that answers each request from the deepest exit its
budget allows, on one or more Triton servers through tritonclient's asyncio gRPC client.

The budget of a request is the smaller of its gRPC deadline's remaining time and its explicit ``budget_ms``
(the configured default when it has neither). ``anytime.serving.scheduler`` decides admission (and, upfront, the
exit); ``anytime.serving.execution`` runs requests, upfront (the default) or progressively. This module does the
rest of the I/O: the RPCs, decoding, health, metrics, auth and shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import heapq
import hmac
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from anytime.options import Option, from_manifest, sizes_of
from anytime.export.repository import read_manifest
from anytime.imaging import BadImage, Header, boxes_to_original, check_size, from_pixels, header, letterbox, open_image
from anytime.serving.api import anytime_pb2 as pb
from anytime.serving.api import anytime_pb2_grpc as pb_grpc
from anytime.serving.execution import EXECUTIONS, Failure, Pending
from anytime.serving.imagecost import ImageCost, family
from anytime.serving.looplag import LoopLag
from anytime.serving.metrics import GatewayMetrics
from anytime.serving.scheduler import Rejected, Request, SchedulerConfig

log = logging.getLogger("anytime.gateway")
SERVICE_NAME = "anytime.v1.Detector"
LATE_ANSWER_GRACE_S = 1.0
_CODES = {c.name: c for c in grpc.StatusCode}


@dataclass
class GatewayConfig:
    repository: Path  # the exported repository: its manifest says exits, input size and classes
    endpoints: list[str]  # Triton gRPC addresses, host:port
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None: off
    default_budget_ms: float = 200.0
    max_budget_ms: float = 60_000.0  # budgets above this are rejected as absurd
    max_image_pixels: int = 40_000_000
    max_message_bytes: int = 32 * 1024 * 1024
    token: str | None = None  # bearer token required on Detector calls (health and reflection stay open)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    calibration_runs: int = 20  # latency samples per exit and endpoint when the manifest's profile does not hold
    spot_check_runs: int = 5  # calls per exit that check the manifest's profile against the endpoint
    # The profile holds when every exit's spot median is within this factor of it. Generous on purpose: the prior
    # only starts the latency model, which then follows the endpoint within seconds; what the check must catch
    # is a profile from another machine or model (several times off), not noise.
    spot_check_tolerance: float = 2.0
    health_interval_s: float = 0.5
    # images decoded at once, one per core by default; admitted requests beyond wait their turn, earliest deadline
    # first (what the scheduler's admission assumed)
    decode_workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    execution: str = "upfront"  # "upfront" (one exit chosen per request) or "progressive" (stage by stage)
    # progressive: a request is answered this long before its deadline with the exit it has (building and
    # sending the answer takes about that long on a busy 2-core machine), plus however late the event loop has
    # run lately (anytime.serving.looplag: during a burst, tens of milliseconds)
    answer_margin_ms: float = 3.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


class Gateway(pb_grpc.DetectorServicer):
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.manifest = read_manifest(config.repository)
        self.exits = [e["exit"] for e in self.manifest["exits"]]
        self.image_size = int(self.manifest["image_size"])
        # What the scheduler chooses among: options (input size, exit), cheapest first, the scheduler's "exits" being
        # their ids 1..n in that order. Progressive execution runs the model's own size only, and the batch planner
        # batches one model's calls without regard to size: both get the exits at the model's size (ids = exits).
        options = from_manifest(self.manifest)
        if config.execution != "upfront" or config.scheduler.planner != "edf":
            options = [o for o in options if o.image_size == self.image_size]
        self.options: dict[int, Option] = dict(enumerate(options, start=1))
        self.option_ids = {o.name: i for i, o in self.options.items()}
        self.models = {i: o.model for i, o in self.options.items()}  # option id -> Triton model
        self.sizes = sizes_of(options)
        self.max_image_size = max(self.sizes)
        # what each option's answer is worth to the scheduler (its AP), when the export knew every option's AP
        self.utility = {i: o.ap for i, o in self.options.items()} if all(
            o.ap is not None for o in options) else None
        self.class_names = list(self.manifest["class_names"])
        self.cat_ids = list(self.manifest.get("cat_ids") or range(1, len(self.class_names) + 1))
        self.metrics = GatewayMetrics()
        self.loop_lag = LoopLag()
        self.metrics.loop_lag.set_function(self.loop_lag.recent_s)
        if config.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {sorted(EXECUTIONS)}, got {config.execution!r}")
        self.execution = EXECUTIONS[config.execution](self)
        self._tasks: set[asyncio.Task] = set()
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._stopping = False
        # Decoding is CPU work on the cores Triton computes on: a bounded pool, earliest deadline first, so a burst
        # cannot starve inference (admission already refused what would not fit, its decoding counted).
        self._decode_slots = DeadlineSlots(config.decode_workers)
        self._decoder = concurrent.futures.ThreadPoolExecutor(config.decode_workers, thread_name_prefix="decode")
        self.image_cost: ImageCost | None = None  # calibrated at start

    # -- start-up -----------------------------------------------------------------------------------------
    async def start(self) -> "Gateway":
        # Time this machine's decoders (the image-cost model's prior); this also warms the decode path, so the
        # first request does not pay for lazy imports and allocations.
        self.image_cost = await asyncio.get_running_loop().run_in_executor(
            self._decoder, lambda: ImageCost.calibrate(self.image_size, quantile=self.config.scheduler.quantile))
        for size in self.sizes:  # the decode path at every size the options take, warm
            await asyncio.get_running_loop().run_in_executor(
                self._decoder, prepare, pb.RawImage(height=8, width=8, channels=3, data=bytes(192)), size,
                self.config.max_image_pixels)
        self.loop_lag.start()
        await self.execution.start()
        # What start-up made (imports, calibration) lives as long as the gateway: the garbage collector need not scan
        # it again. A full collection over it paused the event loop for tens of milliseconds under load, every
        # request in flight answering that much later.
        gc.collect()
        gc.freeze()
        for address in self.config.endpoints:
            self.metrics.endpoint_up.labels(address).set(1)
        self.spawn(self._probe_health())
        await self._serve()
        return self

    @property
    def scheduler(self):
        return self.execution.scheduler

    async def _serve(self) -> None:
        c = self.config
        options = [("grpc.max_receive_message_length", c.max_message_bytes),
                   ("grpc.max_send_message_length", c.max_message_bytes)]
        interceptors = [_TokenAuth(c.token)] if c.token else []
        self._server = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_DetectorServicer_to_server(self, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        address = f"{c.host}:{c.port}"
        if c.tls_cert and c.tls_key:
            creds = grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
            bound = self._server.add_secure_port(address, creds)
        else:
            bound = self._server.add_insecure_port(address)
        if not bound:
            raise RuntimeError(f"cannot listen on {address}")
        self.port = bound
        await self._server.start()
        if c.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(c.metrics_port, addr=c.host, registry=self.metrics.registry)
        await self._set_health(True)
        log.info("gateway listening on %s:%d, endpoints %s", c.host, bound, ", ".join(c.endpoints))

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            result = self._health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def _probe_health(self) -> None:
        """Mark endpoints up or down, so requests fail fast (UNAVAILABLE) while a server is gone."""
        while not self._stopping:
            for address, client in self.execution.clients.items():
                try:
                    up = await asyncio.wait_for(client.is_server_ready(), timeout=1.0)
                except Exception:
                    up = False
                was = address in self.scheduler.available
                if up != was:
                    log.warning("endpoint %s is %s", address, "back" if up else "down")
                    self.set_endpoint(address, up)
            await asyncio.sleep(self.config.health_interval_s)

    def set_endpoint(self, address: str, up: bool) -> None:
        self.scheduler.set_available(address, up)
        self.metrics.endpoint_up.labels(address).set(1 if up else 0)
        self.execution.endpoint_changed(address, up)
        asyncio.ensure_future(self._set_health(bool(self.scheduler.available) and not self._stopping))

    # -- shutdown -------------------------------------------------------------------------------------------
    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let in-flight ones finish (up to ``grace`` seconds), then close."""
        self._stopping = True
        await self._set_health(False)
        if self._server is not None:
            await self._server.stop(grace)
        for task in list(self._tasks):
            task.cancel()
        await self.execution.close()
        await self.loop_lag.stop()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    # -- RPCs -------------------------------------------------------------------------------------------------
    async def Detect(self, request, context):
        try:
            return await self._detect(request, context.time_remaining())
        except Failure as f:
            await context.abort(f.code, f.message)

    async def DetectProgressive(self, request, context):
        """Each exit's detections as soon as they exist, in increasing order. The deepest allowed exit comes
        marked ``final``; when the request ends before it (its deadline, or no time for another stage), a last
        message marked ``final`` repeats the answer: the last message is always the whole answer."""
        exits: asyncio.Queue = asyncio.Queue()
        deepest = min(request.max_exit or self.exits[-1], self.exits[-1])
        task = asyncio.ensure_future(self._detect(request, context.time_remaining(), on_exit=exits.put_nowait))
        answered = False
        try:
            while True:
                getter = asyncio.ensure_future(exits.get())
                finished, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in finished:
                    message = getter.result()
                    message.final = answered = message.exit >= deepest
                    yield message
                    if answered:
                        return
                    continue
                getter.cancel()
                try:
                    answer = task.result()
                except Failure as f:
                    await context.abort(f.code, f.message)
                    return
                while not exits.empty():  # exits that arrived together with the end
                    message = exits.get_nowait()
                    message.final = message.exit >= deepest
                    yield message
                    if message.final:
                        return
                answer.final = True
                yield answer
                return
        finally:
            if answered:  # the request's own end is a moment away: let it count as answered, not cancelled
                await asyncio.wait({task}, timeout=1.0)
            task.cancel()

    async def DetectStream(self, request_iterator, context):
        """Answers in completion order, one per request, whatever happens to each; when the client goes away
        (or the stream ends abnormally) every item still queued or decoding is dropped, not left to run."""
        answers: asyncio.Queue = asyncio.Queue()
        items: set[asyncio.Task] = set()
        end = object()

        async def one(req):
            try:
                answer = await self._detect(req, context.time_remaining())
            except Failure as f:
                answer = _error_item(req, f.code, f.message)
            except Exception as e:  # a bug in one item must not hang the stream: answer it as INTERNAL
                log.exception("stream item %r failed", req.request_id)
                answer = _error_item(req, grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
            answers.put_nowait(answer)

        async def read():
            try:
                async for req in request_iterator:
                    task = asyncio.ensure_future(one(req))
                    items.add(task)
            finally:
                answers.put_nowait(end)

        reader = asyncio.ensure_future(read())
        try:
            reading, answered = True, 0
            while reading or answered < len(items):
                item = await answers.get()
                if item is end:
                    reading = False
                    continue
                answered += 1
                yield item
        finally:
            reader.cancel()
            for task in items:
                task.cancel()

    async def GetModelInfo(self, request, context):
        endpoints = []
        for address in self.config.endpoints:
            prof = self.scheduler.profiles[address]

            def profile(i: int, o: Option) -> pb.ExitProfile:
                return pb.ExitProfile(exit=o.exit, image_size=o.image_size, p50_ms=prof.predict(i, 1, 0.5) * 1e3,
                                      p95_ms=prof.predict(i, 1, 0.95) * 1e3)
            endpoints.append(pb.EndpointInfo(
                address=address, ready=address in self.scheduler.available,
                prior=self.execution.priors.get(address, ""),
                profile=[profile(i, o) for i, o in self.options.items() if o.image_size == self.image_size],
                option_profile=[profile(i, o) for i, o in self.options.items()]))
        return pb.ModelInfo(exits=self.exits, image_size=self.image_size, class_names=self.class_names,
                            category_ids=self.cat_ids, endpoints=endpoints,
                            default_budget_ms=self.config.default_budget_ms, execution=self.execution.name,
                            max_image_size=self.max_image_size,
                            options=[pb.Option(name=o.name, image_size=o.image_size, exit=o.exit, gmacs=o.gmacs or 0.0,
                                               ap=o.ap or 0.0) for o in self.options.values()])

    def allowed_options(self, request) -> list[int]:
        """The option ids a request may take: its pinned option, else every option whose exit is within its
        min_exit..max_exit (at any size). INVALID_ARGUMENT when none is."""
        if request.option:
            i = self.option_ids.get(request.option.strip())
            if i is None:
                raise Failure(grpc.StatusCode.INVALID_ARGUMENT, f"option {request.option!r} is not served; the options "
                                                                f"are {', '.join(self.option_ids)}")
            return [i]
        hi = request.max_exit or self.exits[-1]
        allowed = [i for i, o in self.options.items() if (request.min_exit or 1) <= o.exit <= hi]
        if not allowed:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                          f"no exit between min_exit={request.min_exit} and max_exit={request.max_exit}; this model "
                          f"has exits {self.exits[0]}..{self.exits[-1]}")
        return allowed

    def _choose_size(self, req, head, now: float) -> int:
        """The input size the request's image is letterboxed to: one of its options' sizes, chosen by the scheduler
        just before decoding (``Scheduler.narrow``) with what the queue holds then."""
        groups: dict[int, list[int]] = {}
        for i in self.scheduler.allowed_exits(req):
            groups.setdefault(self.options[i].image_size, []).append(i)
        sizes = sorted(groups)
        if len(sizes) == 1:
            return sizes[0]
        cost = self.image_cost
        preps = []
        for size in sizes:
            mean, sd = cost.estimate(head, size)
            preps.append((groups[size], mean + cost.z * sd, mean, sd * sd))
        return sizes[self.scheduler.narrow(req, now, preps)]

    # -- one request ----------------------------------------------------------------------------------------
    async def _detect(self, request, grpc_remaining: float | None, on_exit=None) -> pb.DetectResponse:
        """One request, start to end. ``on_exit`` receives an answer for every exit as it arrives (progressive
        execution; upfront has one exit); the return value is the final answer."""
        arrival = time.monotonic()
        status = "OK"
        req = None
        try:
            if self._stopping:
                raise Failure(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
            budget = self._budget(request, grpc_remaining)
            if not 0.0 <= request.score_threshold <= 1.0:
                raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"score_threshold must be within [0, 1], got {request.score_threshold}")
            # The image's header says what decoding it will cost: admission counts that work with the model's.
            try:
                image, head = self._open(request)
            except BadImage as e:
                raise Failure(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            # Admission before decoding, and it reserves the request's place: under overload a refused request
            # costs (almost) nothing, and a burst is judged against itself, not against an empty queue.
            allowed = self.allowed_options(request)
            loop = asyncio.get_running_loop()
            pending = Pending(loop.create_future(), arrival)
            cost = self.image_cost
            cost.tick(arrival)
            # admission reserves the cheapest allowed option: its decoding is at that option's size
            mean, sd = cost.estimate(head, self.options[allowed[0]].image_size)
            req = Request(deadline=arrival + budget, arrival=arrival, min_exit=request.min_exit or 1,
                          max_exit=request.max_exit or None, options=allowed, payload=pending,
                          prep=mean + cost.z * sd, prep_expected=mean, prep_variance=sd * sd)
            try:
                self.scheduler.admit(req, time.monotonic())
            except Rejected as r:
                req = None
                raise self._refused(r) from None
            self.update_gauges()
            async with self._decode_slots.slot(req.deadline):
                if req.state != "queued":  # drained while waiting to decode (no endpoint left)
                    await pending.future
                used = time.monotonic() - arrival
                if used >= budget:
                    raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"the budget ran out ({used * 1e3:.1f} of {budget * 1e3:.1f} ms) before decoding")
                side = self._choose_size(req, head, time.monotonic())
                try:
                    pending.pixels, scale, size, took = await loop.run_in_executor(self._decoder, self._prepare,
                                                                                   image, side)
                except BadImage as e:
                    raise Failure(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
                cost.observe(head, took, time.monotonic(), side)
                self.metrics.decode_seconds.labels(family(head)).observe(took)
            if on_exit is not None:
                pending.on_exit = lambda exit, outputs: on_exit(
                    self._answer(request, exit, outputs, scale, size, pending, budget, final=False))
            self.execution.ready(req)
            # Wait for the answer until the gRPC deadline, or a little past the budget (a late answer is still
            # returned, marked budget_met=false); a request still queued then leaves the queue.
            wait = grpc_remaining if grpc_remaining is not None else budget + LATE_ANSWER_GRACE_S
            wait -= time.monotonic() - arrival
            try:
                exit, endpoint, outputs = await asyncio.wait_for(asyncio.shield(pending.future), timeout=max(wait, 0.0))
            except asyncio.TimeoutError:
                raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {wait * 1e3:.0f} ms") from None
            response = self._answer(request, exit, outputs, scale, size, pending, budget, final=True, endpoint=endpoint)
            self.metrics.exit_used.labels(str(self.options[exit].exit)).inc()
            self.metrics.option_used.labels(self.options[exit].name).inc()
            self.metrics.budget.labels("met" if response.budget_met else "missed").inc()
            self.metrics.latency.labels("queue").observe(pending.dispatched - arrival)
            self.metrics.latency.labels("inference").observe(arrival + response.timing.total_ms / 1e3 - pending.dispatched)
            self.metrics.latency.labels("total").observe(response.timing.total_ms / 1e3)
            return response
        except Failure as f:
            status = f.code.name
            raise
        except asyncio.CancelledError:  # the client went away
            status = "CANCELLED"
            raise
        finally:
            if req is not None:
                self.scheduler.cancel(req)  # a no-op once it started; frees its reservation otherwise
                run = req.payload.task
                if run is not None and not run.done():  # the client went away: its remaining stages are dropped
                    run.cancel()
            self.metrics.requests.labels(status).inc()
            self.update_gauges()

    def _answer(self, request, option: int, outputs: dict, scale: float, size, pending, budget: float, final: bool,
                endpoint: str = "") -> pb.DetectResponse:
        o = self.options[option]
        response = pb.DetectResponse(
            detections=self._detections(outputs, scale, size, request.score_threshold), exit=o.exit,
            image_size=o.image_size, exits_available=self.exits, endpoint=endpoint, request_id=request.request_id,
            final=final)
        # Stamped last, once the answer is built: what is left (serialising, sending) is the margin's to cover.
        now = time.monotonic()
        total = now - pending.arrival
        response.budget_met = total <= budget
        dispatched = pending.dispatched if pending.dispatched is not None else now
        response.timing.CopyFrom(pb.Timing(queue_ms=(dispatched - pending.arrival) * 1e3,
                                           inference_ms=(now - dispatched) * 1e3, total_ms=total * 1e3,
                                           budget_ms=budget * 1e3))
        return response

    def _refused(self, r: Rejected) -> Failure:
        if r.code == "RESOURCE_EXHAUSTED":
            self.metrics.shed.labels("overload").inc()
        elif r.code == "DEADLINE_EXCEEDED":
            self.metrics.shed.labels("infeasible").inc()
        return Failure(_CODES[r.code], str(r))

    def _budget(self, request, grpc_remaining: float | None) -> float:
        """Seconds: min(gRPC deadline, explicit budget), else the default; absurd values are refused."""
        b = request.budget_ms
        if math.isnan(b) or math.isinf(b) or b < 0:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, f"budget_ms must be a finite number >= 0, got {b}")
        if b > self.config.max_budget_ms:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                           f"budget_ms {b:.0f} is above the limit of {self.config.max_budget_ms:.0f} ms")
        candidates = [x for x in (b / 1e3 if b > 0 else None, grpc_remaining) if x is not None]
        return min(candidates) if candidates else self.config.default_budget_ms / 1e3

    def _open(self, request):
        """(the image, opened but not decoded, or raw pixels still to wrap; its header), with the size checked."""
        if request.WhichOneof("image") == "raw":
            raw = request.raw
            check_size(int(raw.width), int(raw.height), self.config.max_image_pixels)
            return raw, Header("RAW", int(raw.width), int(raw.height))
        image = open_image(request.encoded, self.config.max_image_pixels)
        return image, header(image)

    def _prepare(self, image, side: int) -> tuple[np.ndarray, float, tuple[int, int], float]:
        """In a decode thread: model input at ``side`` px, scale, original size, and the seconds it took (the cost
        model learns)."""
        self.metrics.decoded.inc()
        t0 = time.perf_counter()
        pixels, scale, size = prepare(image, side, self.config.max_image_pixels)
        return pixels, scale, size, time.perf_counter() - t0

    def _detections(self, outputs: dict, scale: float, size: tuple[int, int], threshold: float) -> list:
        n = int(outputs["num_detections"].reshape(-1)[0])  # Triton returns [1, 1] for a scalar per image
        boxes, keep = boxes_to_original(outputs["boxes"][0, :n].copy(), scale, *size)
        scores, labels = outputs["scores"][0, :n][keep], outputs["labels"][0, :n][keep]
        out = []
        for box, score, label in zip(boxes[keep].tolist(), scores.tolist(), labels.tolist()):
            if score < threshold:
                continue
            out.append(pb.Detection(x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=score,
                                    category_id=int(self.cat_ids[label]), category_name=self.class_names[label]))
        return out

    def update_gauges(self) -> None:
        if self.scheduler is not None:
            self.metrics.queue_depth.set(self.scheduler.queued)
            self.metrics.in_flight.set(sum(len(b) for b in self.scheduler.busy.values()))

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def prepare(image, image_size: int, max_pixels: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """An opened image (or a request's raw pixels) as model input [1, 3, S, S] uint8, the letterbox scale and the
    original (h, w).

    Exactly the evaluation transform (``anytime.imaging.letterbox`` on the opened image), so served detections
    equal evaluated ones.
    """
    if isinstance(image, pb.RawImage):
        image = from_pixels(image.data, image.height, image.width, image.channels, max_pixels)
    height, width = image.height, image.width
    pixels, scale = letterbox(image, image_size)
    return pixels[None], scale, (height, width)


def prepare_image(request, image_size: int, max_pixels: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """A request's image as model input (``prepare`` of what it carries): for tools and tests."""
    if request.WhichOneof("image") == "raw":
        return prepare(request.raw, image_size, max_pixels)
    return prepare(open_image(request.encoded, max_pixels), image_size, max_pixels)


class DeadlineSlots:
    """``n`` slots handed out earliest deadline first (an asyncio.Semaphore hands them out in arrival order).

    Decoding waits here: the scheduler admitted each request assuming the work before it is the work due before it,
    so a request due soon must not wait behind a large image due later."""

    def __init__(self, n: int):
        self.free = n
        self._waiting: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float):
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (deadline, next(self._seq), future))
            try:
                await future  # resolved by a release: the slot is handed over, ``free`` unchanged
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # handed over just as it was cancelled: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # skip waiters that were cancelled
                future.set_result(None)
                return
        self.free += 1


def _error_item(req, code: grpc.StatusCode, message: str) -> pb.DetectResponse:
    return pb.DetectResponse(request_id=req.request_id, error_code=code.value[0], error_message=message)


class _TokenAuth(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on the Detector service; health and reflection stay open."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}"

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            yield  # a generator: the handler of a streaming method

        self._deny = {"unary_unary": grpc.unary_unary_rpc_method_handler(deny),
                      "unary_stream": grpc.unary_stream_rpc_method_handler(deny_stream),
                      "stream_stream": grpc.stream_stream_rpc_method_handler(deny_stream)}

    async def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        # constant-time: a byte-by-byte compare would tell an attacker how much of a guess was right
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected.encode()):
            return await continuation(details)
        kind = {"DetectStream": "stream_stream", "DetectProgressive": "unary_stream"}.get(details.method.rsplit("/", 1)[-1],
                                                                                         "unary_unary")
        return self._deny[kind]
