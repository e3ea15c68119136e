"""Open-loop load generation and evaluation: a COCO dataset streamed through the gateway at Poisson arrivals.

Why open loop: a closed loop (send, wait, send) slows down exactly when the server does, which hides overload.
Here request ``i`` leaves at its arrival time whatever happened to the earlier ones, so queueing, shedding and
missed budgets show up as they would with independent users. Each request carries its own budget and a gRPC
deadline 1 s beyond it, so nothing hangs and late answers are still seen.

The client's clock decides: a request met its budget when its answer arrived within the budget *as the client
measured it*, from send to answer, transport included (the gateway's own ``budget_met`` is kept beside it).
Accuracy is COCO AP over *all* images sent, where only answers that met their budget contribute detections
("AP at budget"): a failed or late request contributes nothing, which is the honest measure of what a user with
a deadline got. ``AP_all`` also counts late answers, for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from anytime.clients.detect import (DEFAULT_SERVER, auth_metadata, image_bytes, letterboxed_request, open_channel,
                                    restore_boxes)
from anytime.serving.api import anytime_pb2 as pb
from anytime.serving.api import anytime_pb2_grpc as pb_grpc

DEADLINE_SLACK_MS = 1000.0  # gRPC deadline = budget + this: late answers still come back and count as missed
MAX_DEFAULT_REQUESTS = 200
DEFAULT_OUT = Path("runs/loadgen")
CONNECT_TIMEOUT_S = 10.0
REFUSED_AT_ONCE_MS = 10.0  # an error within this long of sending counts as a fast refusal


@dataclass(frozen=True)
class BudgetSpec:
    """Where each request's budget comes from: a fixed value, ``uniform`` on [a, b], or ``lognormal`` with
    mean ``a`` ms and log-space standard deviation ``b``."""

    kind: str  # "fixed", "uniform" or "lognormal"
    a: float
    b: float = 0.0

    def __post_init__(self):
        ok = {"fixed": self.a > 0, "uniform": 0 < self.a <= self.b, "lognormal": self.a > 0 and self.b >= 0}
        if self.kind not in ok:
            raise ValueError(f"unknown budget distribution {self.kind!r}: use uniform:LO:HI or lognormal:MEAN_MS:SIGMA")
        if not (ok[self.kind] and math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"bad budget {self.label}: budgets must be > 0 ms (uniform needs 0 < LO <= HI, "
                             "lognormal a mean > 0 and sigma >= 0)")

    @property
    def label(self) -> str:
        return f"{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"

    @property
    def fixed_ms(self) -> float | None:
        return self.a if self.kind == "fixed" else None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, self.a)
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b, n)
        mu = math.log(self.a) - self.b ** 2 / 2  # so that the mean, not the median, is a
        return rng.lognormal(mu, self.b, n)


def parse_budget(value) -> BudgetSpec:
    """``30`` / ``"30"`` -> fixed; ``"uniform:10:60"``; ``"lognormal:30:0.5"``; a BudgetSpec passes through."""
    if isinstance(value, BudgetSpec):
        return value
    if isinstance(value, (int, float)):
        return BudgetSpec("fixed", float(value))
    kind, *params = str(value).strip().split(":")
    try:
        numbers = [float(p) for p in params]
        if not params:
            return BudgetSpec("fixed", float(kind))
    except ValueError:
        raise ValueError(f"cannot read budget {value!r}: use a number of ms, uniform:LO:HI or "
                         "lognormal:MEAN_MS:SIGMA") from None
    if len(numbers) != 2:
        raise ValueError(f"budget distribution {value!r} needs two numbers: uniform:LO:HI or lognormal:MEAN_MS:SIGMA")
    return BudgetSpec(kind.strip().lower(), *numbers)


@dataclass
class RequestRecord:
    """One request as the client saw it; ``detections`` are COCO results (original pixels, xywh)."""

    image_id: int
    budget_ms: float
    arrival_s: float  # scheduled send time, from the start of the setting
    sent_s: float | None = None  # when it actually left (lags arrival only if the client falls behind)
    status: str = "NOT_SENT"
    error: str = ""
    latency_ms: float | None = None  # client-measured, send to answer
    elapsed_ms: float | None = None  # client-measured, send to the end of the call, whatever its outcome
    exit: int | None = None
    image_size: int | None = None  # the input size the answer was computed at (options across sizes)
    budget_met: bool = False  # answered within the budget on the client's clock
    server_budget_met: bool = False  # what the gateway said
    server_ms: dict = field(default_factory=dict)  # the gateway's queue / inference / total times
    detections: list[dict] = field(default_factory=list)


@dataclass
class SettingResult:
    """Every request of one (budget, rate) setting, in arrival order."""

    address: str
    budget: BudgetSpec
    rate: float
    seed: int
    records: list[RequestRecord]
    duration_s: float


def coco_results(response: pb.DetectResponse, image_id: int) -> list[dict]:
    """A gateway answer's detections as COCO results (original pixels, xywh)."""
    return [{"image_id": image_id, "category_id": int(d.category_id),
             "bbox": [round(d.x1, 2), round(d.y1, 2), round(d.x2 - d.x1, 2), round(d.y2 - d.y1, 2)],
             "score": round(float(d.score), 5)} for d in response.detections]


@contextlib.contextmanager
def quiet_gc():
    """While a trace is sent, the client's garbage collector leaves alone what existed before it (``gc.freeze``):
    a full collection over a loaded COCO dataset stalled the client's event loop for about 100 ms, making requests
    late on the client's clock that the server had answered in time (the client measured itself, not the server)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def plan_trace(image_ids, budgets, rate: float, n: int, seed: int = 0) -> list[RequestRecord]:
    """The requests of one setting: ``n`` distinct images of ``image_ids`` at Poisson arrivals of ``rate``/s.

    ``budgets`` is a number of ms, a distribution string (``uniform:10:60``) or a BudgetSpec. The image order,
    arrival times and budget draws come from separate streams seeded by ``seed``, so two settings with the same
    seed send the same images at the same moments and differ only in what they vary, and a simulator given the
    same arguments replays exactly the trace that was sent.
    """
    spec = parse_budget(budgets)
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"the rate must be a finite number of requests per second > 0, got {rate}")
    if not 1 <= n <= len(image_ids):
        raise ValueError(f"cannot send {n} distinct images: the dataset has {len(image_ids)}")
    ids = np.random.default_rng([seed, 0]).permutation(np.asarray(image_ids))[:n].tolist()
    gaps = np.random.default_rng([seed, 1]).exponential(1.0 / rate, n)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])])
    drawn = spec.sample(np.random.default_rng([seed, 2]), n)
    return [RequestRecord(int(i), float(b), float(t)) for i, b, t in zip(ids, drawn, arrivals)]


async def run_setting(address: str, dataset, budgets, rate: float, n: int, seed: int = 0, token: str | None = None,
                      *, tls_ca: str | Path | None = None, progress: bool = True,
                      exits: tuple[int, int] = (0, 0), letterbox: int | None = None, option: str = "") -> SettingResult:
    """Send the trace ``plan_trace(dataset.ids, budgets, rate, n, seed)`` of ``dataset`` (a CocoDetection).

    ``exits`` = (min_exit, max_exit) sent with every request (0 = the gateway chooses): (1, 1) and (K, K) are the
    fixed-exit baselines, run through the same gateway; ``option`` ("128/2") pins one option instead. ``letterbox`` (the model's size; 0: the gateway's): each
    image is letterboxed by the client when it is sent, on the request's clock, in a thread of its own, and goes
    as raw pixels (``anytime.clients.detect.letterboxed_request``); boxes are mapped back.
    """
    from tqdm import tqdm

    spec = parse_budget(budgets)
    records = plan_trace(dataset.ids, spec, rate, n, seed)
    payloads = [image_bytes(dataset.image_dir / dataset.coco.imgs[r.image_id]["file_name"]) for r in records]
    metadata = auth_metadata(token)

    async with open_channel(address, tls_ca, aio=True) as channel:
        stub = pb_grpc.DetectorStub(channel)
        try:  # connect (and check the token) before the clock starts: the first request pays no handshake
            info = await stub.GetModelInfo(pb.ModelInfoRequest(), timeout=CONNECT_TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            raise ConnectionError(f"the gateway at {address} did not answer: {e.code().name}: {e.details()}") from None
        if letterbox == 0:
            letterbox = int(info.max_image_size or info.image_size)
        loop = asyncio.get_running_loop()
        desc = f"budget {spec.label} ms @ {rate:g}/s"
        with quiet_gc(), tqdm(total=n, desc=desc, unit="req", disable=not progress, leave=False) as bar:

            async def one(k: int, record: RequestRecord, start: float) -> None:
                record.sent_s = loop.time() - start
                t0 = time.perf_counter()
                if letterbox:
                    request, scale, size = await loop.run_in_executor(None, letterboxed_request, payloads[k], letterbox)
                else:
                    request = pb.DetectRequest(encoded=payloads[k])
                request.budget_ms, request.request_id = record.budget_ms, str(k)
                request.min_exit, request.max_exit = exits
                request.option = option
                try:
                    response = await stub.Detect(request, timeout=(record.budget_ms + DEADLINE_SLACK_MS) / 1e3,
                                                 metadata=metadata)
                    if letterbox:
                        restore_boxes(response, scale, size)
                except grpc.aio.AioRpcError as e:
                    record.status, record.error = e.code().name, e.details() or ""
                    record.elapsed_ms = (time.perf_counter() - t0) * 1e3
                else:
                    record.latency_ms = record.elapsed_ms = (time.perf_counter() - t0) * 1e3
                    record.status, record.exit = "OK", int(response.exit)
                    record.image_size = int(response.image_size) or None
                    record.budget_met = record.latency_ms <= record.budget_ms
                    record.server_budget_met = bool(response.budget_met)
                    t = response.timing
                    record.server_ms = {"queue": t.queue_ms, "inference": t.inference_ms, "total": t.total_ms}
                    record.detections = coco_results(response, record.image_id)
                finally:
                    bar.update(1)

            start = loop.time()
            tasks = []
            for k, record in enumerate(records):  # open loop: never wait for an answer before the next send
                delay = start + record.arrival_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(k, record, start)))
            await asyncio.gather(*tasks)
            duration = loop.time() - start
    return SettingResult(address, spec, float(rate), seed, records, duration)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99]).tolist()
    return {"p50": p50, "p95": p95, "p99": p99, "mean": float(np.mean(values))}


def evaluate_results(result: SettingResult, coco) -> dict:
    """The summary of one setting: statuses, budget-met rate, latency, exits and COCO AP (``coco``: ground truth).

    AP and AP50 are over every image sent, from the answers that met their budget on the client's clock (AP at
    budget); ``AP_all`` counts late answers too; ``ap_per_exit`` scores each exit on the images it answered.
    """
    from anytime.eval.coco_eval import coco_metrics

    records = result.records
    n = len(records)
    ok = [r for r in records if r.status == "OK"]
    met = [r for r in ok if r.budget_met]
    sent_ids = [r.image_id for r in records]
    overall = coco_metrics(coco, [d for r in met for d in r.detections], sent_ids)
    everything = coco_metrics(coco, [d for r in ok for d in r.detections], sent_ids) if len(met) < len(ok) else overall
    per_exit = {}  # by "SIZE/EXIT" when the answers name their input size, else by exit
    def used(r) -> str:
        return f"{r.image_size}/{r.exit}" if r.image_size else str(r.exit)

    for key in sorted({used(r) for r in ok}, key=lambda k: tuple(int(x) for x in k.split("/"))):
        mine = [r for r in ok if used(r) == key]
        m = coco_metrics(coco, [d for r in mine for d in r.detections], [r.image_id for r in mine])
        per_exit[key] = {"images": len(mine), "AP": m["AP"], "AP50": m["AP50"]}
    # a refusal that reaches the client at once is an answer it can act on (retry elsewhere, degrade); one that
    # comes late, or an expiry, is a failure: "admitted in time" is met over the requests not refused at once
    refused_fast = sum(1 for r in records if r.status != "OK" and r.elapsed_ms is not None
                       and r.elapsed_ms <= REFUSED_AT_ONCE_MS)
    last_send = max((r.sent_s or 0.0) for r in records)
    budgets = [r.budget_ms for r in records]
    return {
        "budget": result.budget.label,
        "budget_ms": result.budget.fixed_ms,
        "budget_mean_ms": float(np.mean(budgets)),
        "rate": result.rate,
        "seed": result.seed,
        "requests": n,
        "status": dict(Counter(r.status for r in records).most_common()),
        "ok": len(ok),
        "late": len(ok) - len(met),
        "budget_met_rate": len(met) / n,
        "refused_at_once": refused_fast,
        "admitted_in_time_rate": len(met) / (n - refused_fast) if n > refused_fast else None,
        "server_budget_met_rate": sum(r.server_budget_met for r in ok) / n,
        "latency_ms": _percentiles([r.latency_ms for r in ok]),
        "server_total_ms": _percentiles([r.server_ms["total"] for r in ok if "total" in r.server_ms]),
        "exits": {str(e): c for e, c in sorted(Counter(r.exit for r in ok).items())},
        # (input size, exit) of the answers, "SIZE/EXIT" (a gateway that serves one size: its exits at that size)
        "options": {f"{s}/{e}": c for (s, e), c in sorted(Counter((r.image_size or 0, r.exit) for r in ok).items())},
        "AP": overall["AP"],
        "AP50": overall["AP50"],
        "AP_all": everything["AP"],
        "ap_per_exit": per_exit,
        "duration_s": result.duration_s,
        "send_rate": (n - 1) / last_send if n > 1 and last_send > 0 else None,
        "max_send_lag_ms": max(((r.sent_s or 0.0) - r.arrival_s) * 1e3 for r in records),
    }


def open_dataset(data_dir=None, split: str = "val"):
    """The split as a CocoDetection (images untransformed: the original files are what gets sent)."""
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.coco import CocoDetection, find_split
    from anytime.data.synth import ensure_default

    if data_dir is None:
        data_dir = ensure_default(DEFAULT_DATA_DIR)
    return CocoDetection(*find_split(data_dir, split))


async def run_settings(address: str, dataset, pairs: list, n: int, seed: int = 0, token: str | None = None,
                       *, tls_ca=None, progress: bool = True, letterbox: int | None = None) -> list[dict]:
    """Every (budget, rate) pair in turn, each evaluated: the ``settings`` list of the report."""
    settings = []
    for budget, rate in pairs:
        result = await run_setting(address, dataset, budget, rate, n, seed, token, tls_ca=tls_ca, progress=progress,
                                   letterbox=letterbox)
        settings.append(evaluate_results(result, dataset.coco))
    return settings


async def closed_loop(address: str, payloads: list, requests: int, clients: int = 4,
                      budget_ms: float = 10_000.0, exits: tuple[int, int] = (0, 0), option: str = "") -> dict:
    """``clients`` senders, each sending its next request when its last one is answered: the stack's throughput
    (answers per second), the client-side latencies (ms), the exits that answered and how the rest failed. The
    issue's "T" is this with 4 clients and generous budgets; with one client it is the idle latency "D".
    ``payloads``: encoded images, or requests already built (``letterboxed_request``), sent in turn."""
    latencies: list[float] = []
    exits_used: set[int] = set()
    failures = Counter()
    counter = iter(range(requests))
    async with open_channel(address, aio=True) as channel:
        stub = pb_grpc.DetectorStub(channel)

        async def sender():
            for i in counter:
                payload = payloads[i % len(payloads)]
                request = pb.DetectRequest(encoded=payload) if isinstance(payload, bytes) else payload
                request.budget_ms, request.min_exit, request.max_exit = budget_ms, *exits
                request.option = option
                t0 = time.perf_counter()
                try:
                    response = await stub.Detect(request, timeout=budget_ms / 1e3 + 1.0)
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    exits_used.add(int(response.exit))
                except grpc.aio.AioRpcError as e:
                    failures[e.code().name] += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"throughput": len(latencies) / wall, "wall_s": wall, "latencies_ms": latencies,
            "exits": sorted(exits_used), "failures": dict(failures)}


def loadgen(address: str = DEFAULT_SERVER, data_dir=None, budgets_ms=None, budget_dist=None, rates=(20.0,),
            requests: int | None = None, out=DEFAULT_OUT, split: str = "val", seed: int = 0,
            token: str | None = None, tls_ca=None, progress: bool = True, letterbox: int | None = None,
            pairs: list | None = None, extra: dict | None = None) -> dict:
    """Run every setting against the gateway at ``address``; writes ``out``/loadgen.json and plots; the report.

    ``budgets_ms``: fixed budgets (one setting each); ``budget_dist``: one distribution string instead
    (default: budgets 10, 20 and 40 ms). Every budget runs at every rate, unless ``pairs`` names the
    (budget ms, rate) settings to run instead. ``requests``: per setting (default: min(200, dataset size)).
    ``extra``: more entries for the report (the demo's plan), written with it.
    """
    from anytime.clients.report import write_plots

    if budgets_ms is not None and budget_dist is not None:
        raise ValueError("give fixed budgets or a budget distribution, not both")
    budgets = [parse_budget(budget_dist)] if budget_dist is not None else [
        parse_budget(b) for b in (budgets_ms if budgets_ms is not None else (10, 20, 40))]
    if not budgets:
        raise ValueError("no budgets given")
    if pairs is not None:
        budgets, rates = [parse_budget(b) for b, _ in pairs], [float(r) for _, r in pairs]
    rates = [float(r) for r in rates]
    bad = [r for r in rates if not (r > 0 and math.isfinite(r))]
    if bad or not rates:
        raise ValueError(f"rates must be requests per second > 0 (open loop), got {rates}")
    dataset = open_dataset(data_dir, split)
    n = min(MAX_DEFAULT_REQUESTS, len(dataset)) if requests is None else int(requests)
    if not 1 <= n <= len(dataset):
        raise ValueError(f"--requests must be between 1 and the split's {len(dataset)} images, got {n}")

    plan = list(zip(budgets, rates)) if pairs is not None else [(b, r) for b in budgets for r in rates]
    settings = asyncio.run(run_settings(address, dataset, plan, n, seed, token, tls_ca=tls_ca,
                                        progress=progress, letterbox=letterbox))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"server": address, "data": str(dataset.image_dir.parent), "split": split, "requests": n, "seed": seed,
              "client_letterbox": letterbox,
              "deadline_slack_ms": DEADLINE_SLACK_MS, "settings": settings, **(extra or {})}
    report["plots"] = [str(p) for p in write_plots(report, out)]
    report["out"] = str(out / "loadgen.json")
    (out / "loadgen.json").write_text(json.dumps(report, indent=2) + "\n")
    return report

