"""The exit scheduler: earliest-deadline-first queueing, admission control, and the exit choice per request.

Pure logic on an injected clock (every method takes ``now``), so the gateway drives it with real time and
tests and benchmarks drive it with a simulated one. The model of an endpoint is ``slots`` parallel servers
whose service time per exit comes from a ``LatencyProfile`` at a high quantile.

Decisions:
- **Admission** (``submit``): a request whose budget is below the fastest exit's predicted latency is
  infeasible: rejected with DEADLINE_EXCEEDED, or run at its first allowed exit anyway (``when_infeasible``).
  A feasible request that the queued work would make late, or that would make already-admitted requests
  late, is shed with RESOURCE_EXHAUSTED: under overload we refuse early rather than let everyone miss.
- **Exit choice** (``dispatch``): when a slot frees, the request with the earliest deadline picks the
  deepest exit whose predicted completion fits its own deadline *and* keeps every queued request that was
  still feasible feasible (assuming they take their fastest exit). Endpoints are tried together; the
  deepest fit wins, then the fastest endpoint.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from anytime.serve.profile import LatencyProfile

DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAVAILABLE = "UNAVAILABLE"

_ids = itertools.count()


@dataclass(eq=False)
class Request:
    deadline: float  # absolute, on the scheduler's clock (seconds)
    arrival: float
    min_exit: int = 1
    max_exit: int | None = None
    payload: Any = None
    id: int = field(default_factory=lambda: next(_ids))
    best_effort: bool = False  # admitted although no exit fits its budget


@dataclass(frozen=True)
class Assignment:
    request: Request
    endpoint: str
    exit: int
    start: float
    predicted: float  # predicted service seconds (planning quantile, margin included)
    expected: float = 0.0  # mean service seconds (margin included): what requests behind it wait for


class Rejected(Exception):
    """A request the scheduler will not run; ``code`` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class SchedulerConfig:
    quantile: float = 0.95  # planning quantile of the latency profiles
    margin_ms: float = 1.0  # time per request outside the model: gateway, transport, decoding
    when_infeasible: str = "reject"  # "reject" (DEADLINE_EXCEEDED) or "first_exit" (run the first allowed exit)
    max_queue: int = 256
    slots_per_endpoint: int = 1  # requests in flight per endpoint
    protect_queue: bool = True  # never take a deeper exit that would make queued requests late
    fixed_exit: int | None = None  # baselines: always this exit (-1 = deepest) instead of choosing


# (request, endpoint, exit) -> seconds; the oracle baseline passes the true service times here
LatencyFn = Callable[[Request, str, int], float]


class Scheduler:
    def __init__(self, profiles: dict[str, LatencyProfile], config: SchedulerConfig | None = None,
                 latency_fn: LatencyFn | None = None):
        if not profiles:
            raise ValueError("the scheduler needs at least one endpoint")
        self.profiles = profiles
        self.config = config or SchedulerConfig()
        self._latency_fn = latency_fn
        self.queue: list[Request] = []  # sorted by (deadline, id)
        self.busy: dict[str, dict[int, Assignment]] = {name: {} for name in profiles}
        self.available: set[str] = set(profiles)  # endpoints that answer; the gateway's health probe keeps it
        self.exits = sorted(set.intersection(*(set(p.exits) for p in profiles.values())))

    # -- the service-time model ------------------------------------------------------------------------
    @property
    def total_slots(self) -> int:
        return self.config.slots_per_endpoint * max(1, len(self.available))

    def set_available(self, endpoint: str, up: bool) -> None:
        (self.available.add if up else self.available.discard)(endpoint)

    def allowed_exits(self, req: Request) -> list[int]:
        hi = req.max_exit if req.max_exit is not None else self.exits[-1]
        allowed = [e for e in self.exits if req.min_exit <= e <= hi]
        if self.config.fixed_exit is not None:
            fixed = self.exits[-1] if self.config.fixed_exit == -1 else self.config.fixed_exit
            allowed = [e for e in allowed if e == fixed]
        return allowed

    def service_time(self, req: Request, endpoint: str, exit: int, expected: bool = False) -> float:
        """Seconds the request would take: at the planning quantile, or its mean (``expected``)."""
        if self._latency_fn is not None:
            base = self._latency_fn(req, endpoint, exit)
        elif expected:
            base = self.profiles[endpoint].expected(exit, 1)
        else:
            base = self.profiles[endpoint].predict(exit, 1, self.config.quantile)
        return base + self.config.margin_ms / 1000.0

    def fastest(self, req: Request, expected: bool = False) -> float:
        """Seconds for the request at its first allowed exit on its fastest endpoint."""
        e = self.allowed_exits(req)[0]
        return min(self.service_time(req, ep, e, expected) for ep in (self.available or self.profiles))

    def _in_flight_work(self, now: float) -> float:
        return sum(max(0.0, a.start + a.expected - now) for per_ep in self.busy.values() for a in per_ep.values())

    def _finish_times(self, now: float, queue: list[Request], extra_work: float = 0.0) -> list[float]:
        """Estimated finish time of each queued request (in order) if every one takes its fastest exit.

        A request waits for the expected work ahead of it and then takes its own planning-quantile time.
        """
        acc, out = self._in_flight_work(now) + extra_work, []
        for r in queue:
            out.append(now + acc / self.total_slots + self.fastest(r))
            acc += self.fastest(r, expected=True)
        return out

    # -- admission --------------------------------------------------------------------------------------
    def submit(self, req: Request, now: float) -> None:
        """Queue the request or raise ``Rejected``."""
        pos = self.check(req, now)
        self.queue.insert(pos, req)

    def check(self, req: Request, now: float) -> int:
        """Raise ``Rejected`` if ``submit`` would; else return the queue position it would take.

        Cheap enough to run before decoding an image, so overload is refused before it costs CPU."""
        if not self.allowed_exits(req):
            raise Rejected(INVALID_ARGUMENT, f"no exit between min_exit={req.min_exit} and max_exit={req.max_exit}; "
                                             f"this model has exits {self.exits[0]}..{self.exits[-1]}")
        if not self.available:
            raise Rejected(UNAVAILABLE, "no inference server is reachable right now")
        budget = req.deadline - now
        if budget <= 0:
            raise Rejected(DEADLINE_EXCEEDED, "the deadline had passed before the request was scheduled")
        fastest = self.fastest(req)
        if fastest > budget:
            if self.config.when_infeasible != "first_exit":
                raise Rejected(DEADLINE_EXCEEDED, f"a budget of {budget * 1e3:.1f} ms is below the fastest exit's "
                                                  f"predicted latency ({fastest * 1e3:.1f} ms)")
            req.best_effort = True
        if len(self.queue) >= self.config.max_queue:
            raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: {len(self.queue)} requests are queued")
        keys = [(r.deadline, r.id) for r in self.queue]
        pos = bisect.bisect(keys, (req.deadline, req.id))
        before = self._finish_times(now, self.queue)
        after = self._finish_times(now, self.queue[:pos] + [req] + self.queue[pos:])
        mine = after[pos]
        if not req.best_effort and mine > req.deadline:
            raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: about {(mine - now - fastest) * 1e3:.0f} ms of queued work "
                                               f"leaves no exit within the {budget * 1e3:.0f} ms budget")
        if self.config.protect_queue:
            hurt = sum(1 for r, b, a in zip(self.queue[pos:], before[pos:], after[pos + 1:])
                       if b <= r.deadline < a)
            if hurt:
                raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: admitting this request would make {hurt} queued "
                                                   "request(s) miss their deadlines")
        return pos

    # -- dispatch -----------------------------------------------------------------------------------------
    def free_endpoints(self) -> list[str]:
        return [ep for ep, per in self.busy.items()
                if ep in self.available and len(per) < self.config.slots_per_endpoint]

    def dispatch(self, now: float) -> tuple[list[Assignment], list[Request]]:
        """Start queued requests on free slots. Returns (assignments, expired requests to fail)."""
        started, expired = [], []
        while self.queue and self.free_endpoints():
            req = self.queue.pop(0)
            if not req.best_effort and now + self.fastest(req) > req.deadline:
                if self.config.when_infeasible != "first_exit":
                    expired.append(req)
                    continue
                req.best_effort = True
            endpoint, exit, predicted = self._choose(req, now)
            a = Assignment(req, endpoint, exit, now, predicted, self.service_time(req, endpoint, exit, expected=True))
            self.busy[endpoint][req.id] = a
            started.append(a)
        return started, expired

    def _choose(self, req: Request, now: float) -> tuple[str, int, float]:
        allowed = self.allowed_exits(req)
        rest = self.queue
        feasible_before = None
        if self.config.protect_queue and rest:
            # who among the queued can still make it if this request takes its fastest exit
            feasible_before = [f <= r.deadline for r, f in
                               zip(rest, self._finish_times(now, rest, self.fastest(req, expected=True)))]
        best = None
        for ep in self.free_endpoints():
            for exit in reversed(allowed):
                s = self.service_time(req, ep, exit)
                fits = now + s <= req.deadline or (req.best_effort and exit == allowed[0])
                if fits and feasible_before is not None:
                    finish = self._finish_times(now, rest, self.service_time(req, ep, exit, expected=True))
                    fits = all(f <= r.deadline for r, f, ok in zip(rest, finish, feasible_before) if ok)
                if fits:
                    if best is None or (exit, -s) > (best[1], -best[2]):
                        best = (ep, exit, s)
                    break
        if best is None:  # nothing fits everyone: take the first allowed exit on the fastest endpoint
            ep = min(self.free_endpoints(), key=lambda e: self.service_time(req, e, allowed[0]))
            best = (ep, allowed[0], self.service_time(req, ep, allowed[0]))
        return best

    def complete(self, a: Assignment, now: float, latency: float | None = None) -> None:
        """A dispatched request finished (or failed); ``latency`` (seconds) updates the endpoint's profile."""
        self.busy[a.endpoint].pop(a.request.id, None)
        if latency is not None:
            self.profiles[a.endpoint].observe(a.exit, 1, latency)

    def cancel(self, req: Request) -> bool:
        """Drop a queued request (its client went away). True if it was still queued."""
        for i, r in enumerate(self.queue):
            if r is req:
                del self.queue[i]
                return True
        return False
