"""Discrete-event simulation of the scheduler on a simulated clock: same code path as the gateway, no sleeps.

A request is admitted when it arrives (its place reserved), becomes ready ``prepare`` seconds later (the
gateway decoding its image), runs for its true service time, and its answer reaches the client ``respond``
seconds after that (building and sending the answer). Used by the tests and by ``benchmarks/scheduler.py`` to
compare policies on one arrival trace, and to predict what the real gateway will do on that trace.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from anytime.serving.scheduler import Rejected, Request, Scheduler


@dataclass
class SimRequest:
    arrival: float  # seconds
    budget: float  # seconds
    true_latency: dict[tuple[str, int], float]  # (endpoint, exit) -> service seconds this request will take
    item: int = 0  # which image (for AP accounting)
    min_exit: int = 1
    max_exit: int | None = None
    prepare: float = 0.0  # seconds from arrival until its input is ready (decoding)
    respond: float = 0.0  # seconds from the end of inference until the client has the answer


@dataclass
class Outcome:
    item: int
    status: str  # "OK" or a gRPC status name
    exit: int | None = None
    endpoint: str | None = None
    latency: float | None = None  # arrival -> answer, seconds
    budget: float = 0.0

    @property
    def met(self) -> bool:
        return self.status == "OK" and self.latency is not None and self.latency <= self.budget + 1e-9


def simulate(scheduler: Scheduler, requests: list[SimRequest]) -> list[Outcome]:
    """Run the trace through the scheduler; returns one outcome per request, in input order."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    admitted: dict[int, Request] = {}
    seq = itertools.count()
    events = [(r.arrival, next(seq), "arrive", i) for i, r in enumerate(requests)]
    heapq.heapify(events)

    def start(now: float) -> None:
        started, expired = scheduler.dispatch(now)
        for req in expired:
            i = req.payload
            outcomes[i] = Outcome(requests[i].item, "DEADLINE_EXCEEDED", budget=requests[i].budget,
                                  latency=now - requests[i].arrival)
        for a in started:
            service = requests[a.request.payload].true_latency[(a.endpoint, a.exit)]
            heapq.heappush(events, (now + service, next(seq), "finish", (a, service)))

    while events:
        now, _, kind, what = heapq.heappop(events)
        if kind == "arrive":
            r = requests[what]
            req = Request(deadline=r.arrival + r.budget, arrival=r.arrival, min_exit=r.min_exit,
                          max_exit=r.max_exit, payload=what)
            try:
                scheduler.admit(req, now)
            except Rejected as e:
                outcomes[what] = Outcome(r.item, e.code, budget=r.budget, latency=0.0)
                continue
            admitted[what] = req
            heapq.heappush(events, (now + r.prepare, next(seq), "ready", what))
            continue
        if kind == "ready":
            scheduler.mark_ready(admitted[what], now)
        else:
            a, service = what
            scheduler.complete(a, now, latency=service)
            i = a.request.payload
            outcomes[i] = Outcome(requests[i].item, "OK", a.exit, a.endpoint,
                                  now + requests[i].respond - requests[i].arrival, requests[i].budget)
        start(now)
    return outcomes  # type: ignore[return-value]
