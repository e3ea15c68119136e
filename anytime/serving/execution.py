"""How the gateway runs an admitted, decoded request on Triton: two strategies behind one interface.

- ``UpfrontExecution`` picks one exit per request *before* it starts (the scheduler's exit choice) and calls that
  exit's model (``anytime_exit{k}``): one Triton call per request, one slot per endpoint.
- ``ProgressiveExecution`` sends the request to the progressive model (``anytime_progressive``), which runs it
  stage by stage and streams each exit back as it is reached; the request is answered with the deepest exit
  that arrived by its deadline (or at once when the last allowed exit arrives). Stage order, batching and
  stopping are decided next to the stages (``anytime.serving.progressive``); the gateway only admits.

Both calibrate at start-up (or take the manifest's measured profile after a spot check), keep the
``Scheduler`` that admits requests (its reservation is a request's work until its first useful exit), and
report through the gateway's metrics. ``Failure`` carries the gRPC status a request ends with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from anytime.serving.batching import BatchScheduler
from anytime.serving.latency import LatencyProfile
from anytime.serving.measure import infer_exit, stream_progressive, time_calls, time_triton
from anytime.serving.progressive import REFUSED
from anytime.serving.scheduler import Request, Scheduler, SchedulerConfig

log = logging.getLogger("anytime.gateway")
OnExit = Callable[[int, dict], None]  # (exit, outputs) as each exit arrives


class Failure(Exception):
    """A request that ends with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(eq=False)
class Pending:
    """An admitted request: where its answer goes, and (once decoded) what the Triton call needs."""

    future: asyncio.Future
    arrival: float
    pixels: np.ndarray | None = None
    dispatched: float | None = None
    on_exit: OnExit | None = None
    task: asyncio.Task | None = None  # progressive: the request's run; cancelled when its client goes away


def unavailable(message: str = "no inference server is reachable right now") -> Failure:
    return Failure(grpc.StatusCode.UNAVAILABLE, message)


def settle(future: asyncio.Future, result=None, exception: Exception | None = None) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


def _unreachable(e: InferenceServerException) -> bool:
    return "UNAVAILABLE" in str(e.status()) or "failed to connect" in (e.message() or "").lower()


# what the progressive model says when a request's budget cannot give it its first exit
_OUT_OF_TIME = (REFUSED["failed"], "deadline passed")


def triton_failure(gateway, address: str, e: InferenceServerException) -> Failure:
    """The gRPC status a failed Triton call ends its request with; an unreachable endpoint is marked down."""
    message = e.message() or ""
    if _unreachable(e):
        gateway.set_endpoint(address, False)
        return unavailable(f"inference server {address}: {message}")
    if REFUSED["refused"] in message:  # the progressive model's own admission: the load, not the budget
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"inference server {address}: {message}")
    late = "DEADLINE" in str(e.status()) or any(m in message for m in _OUT_OF_TIME)
    return Failure(grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.INTERNAL,
                   f"inference server {address}: {message}")


class Execution:
    """What both strategies share: the Triton clients, the admission scheduler, the start-up prior."""

    name = ""

    def __init__(self, gateway):
        self.gateway = gateway
        self.config = gateway.config
        self.clients: dict[str, triton_aio.InferenceServerClient] = {}
        self.scheduler: Scheduler | None = None
        self.priors: dict[str, str] = {}  # endpoint -> where its latency prior came from

    async def start(self) -> None:
        profiles = {}
        for address in self.config.endpoints:
            client = triton_aio.InferenceServerClient(address)
            self.clients[address] = client
            try:
                profiles[address] = await self.calibrate(address, client)
            except InferenceServerException as e:
                raise RuntimeError(f"endpoint {address}: calibration failed: {e.message()}") from None
        self.scheduler = Scheduler(profiles, self.scheduler_config(), utility=self.gateway.utility)

    def scheduler_config(self) -> SchedulerConfig:
        return self.config.scheduler

    async def calibrate(self, address: str, client) -> LatencyProfile:
        raise NotImplementedError

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    # -- the gateway calls these -----------------------------------------------------------------------------
    def ready(self, req: Request) -> None:
        """``req`` (admitted, its ``payload.pixels`` decoded) may run now."""
        raise NotImplementedError

    def endpoint_changed(self, address: str, up: bool) -> None:
        if not self.scheduler.available:  # nothing can serve the queue now: fail it at once, not at its deadline
            for req in self.scheduler.drain():
                settle(req.payload.future, exception=unavailable())


class UpfrontExecution(Execution):
    """One exit per request; the exit models. ``SchedulerConfig.planner`` "edf" (the default): one call per request,
    its exit planned by ``anytime.serving.scheduler``; "batch": one call per batch of ready requests, the exit chosen
    at dispatch (``anytime.serving.batching``)."""

    name = "upfront"

    def __init__(self, gateway):
        super().__init__(gateway)
        sc = self.config.scheduler
        self.batching = sc.planner == "batch"
        model_max = int(gateway.manifest.get("max_batch_size") or 1)
        self.max_batch = max(1, min(sc.max_batch or model_max, model_max)) if self.batching else 1

    async def start(self) -> None:
        await super().start()
        if self.batching:  # the planner takes the profiles the calibration made; the EDF scheduler is replaced
            self.scheduler = BatchScheduler(self.scheduler.profiles, self.config.scheduler, max_batch=self.max_batch,
                                            decode_workers=self.config.decode_workers)

    async def calibrate(self, address: str, client) -> LatencyProfile:
        """The manifest's measured profile (``anytime profile``) when a quick spot check says the endpoint still
        runs at that speed, else ``calibration_runs`` fresh calls per exit; and, for batching, a few calls per exit
        at each batch size the planner may send (powers of two up to ``max_batch``)."""
        g, c = self.gateway, self.config
        inputs = {i: o.image_size for i, o in g.options.items()}  # each option's input size
        # ``anytime profile`` measures the exits at the model's own size: a prior for option ids only when they are
        # those exits
        own = all(o.image_size == g.image_size and o.exit == i for i, o in g.options.items())
        manifest = _manifest_samples(g.manifest, list(g.options)) if own else None
        samples = None
        if manifest is not None:
            spot = await time_triton(client, g.models, inputs, c.spot_check_runs, warmup=2)
            off = {e: float(np.median(spot[e])) * 1e3 / float(np.median(manifest[e])) for e in g.options}
            ratios = ", ".join(f"exit {e} {r:.2f}" for e, r in off.items())
            if all(1 / c.spot_check_tolerance <= r <= c.spot_check_tolerance for r in off.values()):
                log.info("endpoint %s: the manifest's latency profile holds (spot check / profile: %s)", address, ratios)
                self.priors[address] = "manifest"
                samples = manifest
            else:
                log.info("endpoint %s: the manifest's profile is off (spot check / profile: %s); calibrating", address,
                         ratios)
        if samples is None:
            measured = await time_triton(client, g.models, inputs, c.calibration_runs, warmup=5)
            self.priors[address] = "calibrated"
            _log_profile(address, {g.options[i].name: s for i, s in measured.items()})
            samples = {e: [x * 1e3 for x in s] for e, s in measured.items()}
        prior = {e: {1: {"samples_ms": list(s)}} for e, s in samples.items()}
        sizes = [b for b in (2, 4, 8, 16, 32) if b <= self.max_batch]
        if self.max_batch > 1 and self.max_batch not in sizes:
            sizes.append(self.max_batch)
        for b in sizes:
            per = await time_triton(client, g.models, inputs, runs=4, warmup=1, batch=b)
            for e, s in per.items():
                prior[e][b] = {"mean": float(np.mean(s)) * 1e3}
        if sizes:
            log.info("endpoint %s: batch latency (mean ms) %s", address, "; ".join(
                f"exit {e}: " + ", ".join(f"b{b} {prior[e][b].get('mean', np.mean(prior[e][b].get('samples_ms', [0]))):.1f}"
                                          for b in sorted(prior[e])) for e in sorted(prior)))
        return LatencyProfile(prior, quantile=c.scheduler.quantile)

    def ready(self, req: Request) -> None:
        self.scheduler.mark_ready(req, time.monotonic())
        self.pump()

    def endpoint_changed(self, address: str, up: bool) -> None:
        super().endpoint_changed(address, up)
        if up:
            self.pump()

    def pump(self) -> None:
        g = self.gateway
        started, expired = self.scheduler.dispatch(time.monotonic())
        for req in expired:
            g.metrics.shed.labels("expired").inc()
            settle(req.payload.future, exception=Failure(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the budget ran out while the request waited for a slot"))
        now = time.monotonic()
        for call in started:
            members = getattr(call, "requests", None) or (call.request,)
            for r in members:
                r.payload.dispatched = now
            g.metrics.batch_size.observe(len(members))
            g.spawn(self._run(call, members))
        g.update_gauges()

    async def _run(self, call, members) -> None:
        t0 = time.monotonic()
        censored = True  # a failed call still took this long at least: the profile learns that
        try:
            # The Triton call may take until the last member's deadline (plus a little, to still report it late).
            timeout = max(max(r.deadline for r in members) - t0, 0.0) + 1.0
            pixels = members[0].payload.pixels if len(members) == 1 else np.concatenate(
                [r.payload.pixels for r in members])
            outputs = await infer_exit(self.clients[call.endpoint], self.gateway.models[call.exit], pixels, timeout)
            censored = False
            for i, r in enumerate(members):  # each member its own row of every output
                settle(r.payload.future, result=(call.exit, call.endpoint, {n: v[i:i + 1] for n, v in outputs.items()}))
        except InferenceServerException as e:
            for r in members:  # each member its own status
                settle(r.payload.future, exception=triton_failure(self.gateway, call.endpoint, e))
        except Exception as e:  # never leave a caller waiting
            for r in members:
                settle(r.payload.future, exception=Failure(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))
        finally:
            now = time.monotonic()
            latency = None if call.endpoint not in self.scheduler.available else now - t0  # refused: says nothing
            self.scheduler.complete(call, now, latency, censored=censored)
            self.pump()


class ProgressiveExecution(Execution):
    """Every request through the progressive model, stage by stage; answered at its deadline or last exit."""

    name = "progressive"

    def __init__(self, gateway):
        super().__init__(gateway)
        progressive = gateway.manifest.get("progressive")
        if not progressive:
            raise RuntimeError(f"{self.config.repository} has no progressive model: export it again (anytime export) "
                               "or serve with --execution upfront")
        self.model = progressive["model"]
        self.max_stage_batch = int(progressive.get("max_stage_batch", 1))
        self.parallelism = 1.0  # first stages served at once, in effect, thanks to stage batching (measured)
        self.outstanding = {address: 0 for address in self.config.endpoints}
        self.transport = {address: 0.0 for address in self.config.endpoints}  # seconds, see _round_trip
        # seconds until the model says a request's first stage is done, measured at calibration (see _run)
        self.first_stage = {address: 0.0 for address in self.config.endpoints}

    def scheduler_config(self) -> SchedulerConfig:
        """Admission only: a request's reservation is its work until its first useful exit, drained by the
        effective parallelism that stage batching gives each endpoint."""
        from dataclasses import replace

        return replace(self.config.scheduler, slots_per_endpoint=self.parallelism)

    async def calibrate(self, address: str, client) -> LatencyProfile:
        """Time to each exit through the progressive model, one request at a time (a request that wants exit k
        only, as a unary request is run); then how many first exits it serves at once when a batch of them
        arrives together."""
        g, c = self.gateway, self.config
        pixels = np.zeros((1, 3, g.image_size, g.image_size), np.uint8)
        samples: dict[int, list[float]] = {e: [] for e in g.exits}
        first_stage: list[float] = []  # ms until the model says a first-exit request's first stage is done

        async def one():  # a request for exit k runs k stages' features and one head: what Detect runs
            for e in g.exits:
                t0 = time.perf_counter()
                mark = (lambda t0=t0: first_stage.append((time.perf_counter() - t0) * 1e3)) if e == g.exits[0] else None
                async for _ in stream_progressive(client, self.model, pixels, 60_000.0, (e, e), on_first_stage=mark):
                    samples[e].append((time.perf_counter() - t0) * 1e3)
        for _ in range(3):  # warm-up
            await one()
        for e in samples:
            samples[e].clear()
        first_stage.clear()
        await time_calls(one, c.calibration_runs, 0)
        first = float(np.median(samples[g.exits[0]])) / 1e3
        self.first_stage[address] = float(np.median(first_stage)) / 1e3 if first_stage else 0.0
        batch = max(1, self.max_stage_batch)

        async def first_exit_only():
            async for _ in stream_progressive(client, self.model, pixels, 60_000.0, (1, 1)):
                pass
        t0 = time.perf_counter()
        await asyncio.gather(*(first_exit_only() for _ in range(2 * batch)))
        throughput = 2 * batch / (time.perf_counter() - t0)
        self.parallelism = max(1.0, throughput * first)
        self.transport[address] = await self._round_trip(client, pixels)
        self.priors[address] = "calibrated"
        log.info("endpoint %s: progressive, %s; a first stage is done after %.1f ms; "
                 "stage batching serves about %.1f first stages at once; a request's round trip without compute takes "
                 "%.1f ms", address, ", ".join(f"exit {e} p50 {np.percentile(s, 50):.1f} ms" for e, s in samples.items()),
                 self.first_stage[address] * 1e3, self.parallelism, self.transport[address] * 1e3)
        return LatencyProfile.from_samples(samples, quantile=c.scheduler.quantile)

    async def _round_trip(self, client, pixels: np.ndarray, runs: int = 7) -> float:
        """Seconds from sending a request to the progressive model to its answer, without any compute: the model
        refuses a budget of a microsecond at once. The model counts a budget from when the request reaches it
        and plans its answer to leave its own margin before the end of it (for the way back), so the gateway gives
        it the budget less half this trip (the way there)."""
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            try:
                async for _ in stream_progressive(client, self.model, pixels, 1e-3, (1, 1)):
                    pass
            except InferenceServerException:
                pass
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def ready(self, req: Request) -> None:
        self.scheduler.prepared(req, time.monotonic())
        req.payload.task = self.gateway.spawn(self._run(req))

    def _endpoint(self) -> str | None:
        up = [a for a in self.config.endpoints if a in self.scheduler.available]
        return min(up, key=lambda a: self.outstanding[a]) if up else None

    async def _run(self, req: Request) -> None:
        g = self.gateway
        pending: Pending = req.payload
        address = self._endpoint()
        if address is None:
            settle(pending.future, exception=unavailable())
            self.scheduler.cancel(req)
            return
        pending.dispatched = time.monotonic()
        best, failure = None, None  # the answer so far; what the request ends with if it gets none
        self.outstanding[address] += 1
        # Answer a little before the deadline (building and sending the answer takes that long, and longer when
        # the event loop runs late); the stages get what is left of the budget until then, less the request's round
        # trip to the model. The lag part of the margin takes at most half the slack beyond the time the first
        # useful exit needs (as predicted), so a tight budget keeps that time and some room for noise.
        now = time.monotonic()
        base = self.config.answer_margin_ms / 1e3
        left = req.deadline - now
        first_needs = self.scheduler.profiles[address].predict(req.min_exit)
        margin = base + min(g.loop_lag.recent_s(now), max(0.0, left - base - first_needs) / 2)
        answer_by = req.deadline - margin
        # The model counts the budget from when the request reaches it (half the round trip: the way back is
        # in the model's own margin), and refuses it at once when none is left.
        budget_ms = max((answer_by - now - self.transport[address] / 2) * 1e3, 1e-3)
        exits = (req.min_exit, req.max_exit or 0)
        try:
            async with asyncio.timeout_at(_loop_time(answer_by)):
                # Its reservation is its work until its first useful exit. Once its first stage is done, what is
                # left of it is a head (heads are lazy: the answer's head may run only at the end, and the model
                # keeps time for it before any deeper stage); it is gone once a useful exit came.
                def first_stage_done():
                    whole = self.scheduler.profiles[address].expected(req.min_exit)
                    left = max(whole - self.first_stage[address], 0.05 * whole)
                    self.scheduler.progress(req, left / whole, time.monotonic())
                async for exit, outputs in stream_progressive(self.clients[address], self.model, pending.pixels,
                                                              budget_ms, exits, every_exit=pending.on_exit is not None,
                                                              on_first_stage=first_stage_done):
                    if exit < req.min_exit:  # of no use to it (a stream of every exit): still reserved
                        continue
                    self.scheduler.cancel(req)
                    best = (exit, address, outputs)
                    if pending.on_exit is not None:
                        pending.on_exit(exit, outputs)
        except TimeoutError:  # the deadline: answer with what has arrived (the stream is cancelled on exit)
            pass
        except InferenceServerException as e:  # with an exit in hand, that is still the answer
            failure = triton_failure(g, address, e)
        except grpc.aio.AioRpcError as e:  # the stream itself broke: Triton died or the connection went
            down = e.code() == grpc.StatusCode.UNAVAILABLE
            if down:
                g.set_endpoint(address, False)
            failure = Failure(grpc.StatusCode.UNAVAILABLE if down else grpc.StatusCode.INTERNAL,
                              f"inference server {address}: {e.details()}")
        except Exception as e:  # never leave a caller waiting
            failure = Failure(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            self.outstanding[address] -= 1
            self.scheduler.cancel(req)
            if best is not None:
                settle(pending.future, result=best)
            else:
                settle(pending.future, exception=failure or Failure(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "no exit could be computed within the budget"))
            g.update_gauges()


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running event loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


def _log_profile(address: str, samples: dict[str, list[float]]) -> None:
    for option, s in samples.items():
        log.info("endpoint %s option %s: p50 %.1f ms, p95 %.1f ms", address, option, np.percentile(s, 50) * 1e3,
                 np.percentile(s, 95) * 1e3)


def _manifest_samples(manifest: dict, exits: list[int]) -> dict[int, list[float]] | None:
    """Batch-1 Triton latency samples (ms) per exit from the manifest's profile, if it has them for every exit.

    The exporter keeps a profile only while the models are the very ones it was measured on (by hash)."""
    exits_prof = ((manifest.get("latency_profile") or {}).get("triton") or {}).get("exits") or {}
    out = {}
    for e in exits:
        per_batch = exits_prof.get(str(e)) or exits_prof.get(e) or {}
        stats = per_batch.get("1") or per_batch.get(1) or {}
        if len(stats.get("samples_ms") or []) < 10:
            return None
        out[e] = list(stats["samples_ms"])
    return out


EXECUTIONS = {"upfront": UpfrontExecution, "progressive": ProgressiveExecution}
