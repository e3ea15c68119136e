"""The exit scheduler: earliest-deadline-first queueing, admission control, and the exit choice per request.

Pure logic on an injected clock (every method takes ``now``), so the gateway drives it with real time and
tests and benchmarks drive it with a simulated one. Each endpoint is ``slots`` servers whose service time per
exit comes from its ``LatencyProfile``; the time others wait behind a request is its mean (a sum of p95s would
refuse work the system can do), and every deadline keeps ``protect_z`` standard deviations of the work queued and
running, its own included (``safety``: the calls' noise partly averages out, so variances add; the whole queue's
variance is an upper bound on the part before each deadline that keeps every decision one lookup). A request's image counts
too: until it is decoded, its predicted decoding (``Request.prep``, ``anytime.serving.imagecost``) is part of
its own time and of the work ahead of later deadlines.

Decisions, each O(log n) in the queue length (``anytime.serve.edf`` keeps the sums):

- **Admission** (``admit``): a budget below the fastest exit's predicted latency is infeasible: rejected with
  DEADLINE_EXCEEDED, or run at its first allowed exit anyway (``when_infeasible``). A feasible request that the
  queued work would make late, or that would make an admitted request late, is shed with RESOURCE_EXHAUSTED:
  under overload we refuse early rather than let everyone miss. An admitted request *reserves* its place at
  once, before its image is decoded, so a burst of simultaneous arrivals sees itself: the 200th request of a
  burst is refused against the 199 before it, not against an empty queue.
- **Exit choice** (``dispatch``): when a slot frees, the ready request with the earliest deadline takes the
  deepest exit whose predicted completion fits its own deadline *and* keeps every queued request that can still
  make its deadline able to. With several endpoints the deepest fit wins, then the faster endpoint; a request
  that fits nowhere free but would fit on a busy faster endpoint once it frees waits for it.
- **Work in flight** is what a running call is still expected to take given how long it has run already (the
  mean residual life), so a call that outlived its mean still counts. Queued work is measured in units of the
  fastest endpoint and drained by the pooled capacity of all available endpoints.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable

from anytime.serving.edf import SlackTree
from anytime.serving.latency import LatencyProfile

DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAVAILABLE = "UNAVAILABLE"

_ids = itertools.count()
_PHI = NormalDist().cdf


@dataclass(eq=False)
class Request:
    deadline: float  # absolute, on the scheduler's clock (seconds)
    arrival: float
    min_exit: int = 1
    max_exit: int | None = None
    # The scheduler's exits this request may take (None: min_exit..max_exit). The gateway's scheduler works on
    # *options* (an input size and an exit, ids ordered by cost: anytime.options) and passes each request
    # the ids its min_exit/max_exit, pinned option and, once its size is chosen (``narrow``), its size allow.
    options: list[int] | None = None
    payload: Any = None
    id: int = field(default_factory=lambda: next(_ids))
    best_effort: bool = False  # admitted although no exit fits its budget
    state: str = "new"  # new -> queued (admitted: its place reserved) -> running -> gone (or queued -> gone)
    ready: bool = False  # its input is prepared: it may be dispatched
    protected: bool = True  # its deadline vetoes decisions that would make it late (off once it is late anyway)
    share: float = 1.0  # of its work still to do (progressive execution: after its first stage, its answer's head)
    # Preparing its input (decoding the image) until ``mark_ready``: seconds at the planning quantile, expected
    # seconds, and their variance (``anytime.serving.imagecost``); zero for a request with nothing to prepare.
    prep: float = 0.0
    prep_expected: float = 0.0
    prep_variance: float = 0.0
    variance: float = 0.0  # of its expected work, as counted in the queue (kept by the scheduler)

    @property
    def key(self) -> tuple[float, int]:
        return (self.deadline, self.id)


@dataclass(frozen=True)
class Assignment:
    request: Request
    endpoint: str
    exit: int
    start: float
    predicted: float  # predicted service seconds (planning quantile, margin included)
    expected: float = 0.0  # mean service seconds: what requests behind it wait for


class Rejected(Exception):
    """A request the scheduler will not run; ``code`` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class SchedulerConfig:
    quantile: float = 0.95  # planning quantile of the latency profiles
    # per request, outside the Triton call: receiving the request, building the answer, transport both ways. At idle
    # the client sees 1.9 ms beyond the gateway's total (benchmarks/scheduler.py); the late answers at 50 % load gave
    # 6-9 ms. benchmarks/serving_goals.py, 2 ms against 5 ms taking turns, one run: admitted requests in time
    # 92.8 / 91.9 / 87.7 % -> 100 / 98.1 / 98.3 % on the benchmark's images (50 % 3D, 80 % 3D, 50 % 1.5D), and
    # 94.0 / 90.3 / 88.7 % -> 95.1 / 95.1 / 91.8 % on the photo mix, met within 3 points either way
    margin_ms: float = 5.0
    gap_ms: float = 0.3  # per call, a slot's idle time between one call and the next (event loop, RPC set-up)
    when_infeasible: str = "reject"  # "reject" (DEADLINE_EXCEEDED) or "first_exit" (run the first allowed exit)
    max_queue: int = 256
    slots_per_endpoint: int = 1  # requests in flight per endpoint
    protect_queue: bool = True  # never admit or deepen a request at the price of a queued request's deadline
    fixed_exit: int | None = None  # baselines: always this exit (-1 = deepest) instead of choosing
    drift: float = 0.1  # re-key the queue when predictions moved by more than this fraction since it was keyed
    # The queue's work is a sum of calls whose noise partly averages out: every deadline keeps this many standard
    # deviations of the sum of the work queued and running (variances add) beyond its mean. 1.64: 95% one-sided.
    protect_z: float = 1.64
    # A queued request's image decoding counts as work on the same pool as inference, at this weight: the share of
    # it that delays the calls queued behind it. Decoding runs in threads of its own, so much of it overlaps the
    # Triton call in flight, but on 2 cores that ONNX Runtime also uses, not all. Measured from capacity: photos
    # (7.6 CPU ms of decoding each) against the benchmark's images (1.3 ms), 4 closed-loop clients, 13.1 against
    # 11.6 ms and 13.6 against 10.1 ms per request in two runs (benchmarks/serving_goals.py): 0.24 and 0.55.
    # 0 on a gateway that decodes on cores of its own.
    prep_weight: float = 0.4
    # A dispatched request whose exits no longer fit at the planning quantile still runs its first exit when it
    # fits at the mean: an answer that is probably in time beats a certain expiry.
    rescue: bool = True
    # A request refused as infeasible is admitted anyway (best effort, its first exit) when the profile that refuses
    # it predicts slower than its prior from observations older than this, at most once per this interval: refused
    # requests bring no observations, so a profile that learnt a slowdown (a busy neighbour, a burst) would otherwise
    # refuse every request until its horizon forgets the slowdown, seconds after the machine got fast again. 0: off.
    probe_interval_ms: float = 200.0
    # Upfront execution's planner: "edf" (this module's Scheduler, one image per call) or "batch"
    # (anytime.serving.batching: admission by the cheapest exit given the queue, exit chosen at dispatch, ready
    # requests batched into one call). EDF stays the default: in benchmarks/peers.py (3 repetitions, 10 rows) batch met
    # more budgets in 6 rows and fewer in 4, the same 567 points in all, with a lower utility in 6 (docs/results.md)
    planner: str = "edf"
    max_batch: int | None = None  # images per call with the batch planner (None: the exit models' max_batch_size)
    # The batch planner's replay of the queue (admission, and the requests behind a call at dispatch): at "mean"
    # latencies and decoding times, or at the planning "quantile" (each call and decode at its p95)
    plan_at: str = "mean"

    def __post_init__(self):
        if self.when_infeasible not in ("reject", "first_exit"):
            raise ValueError(f"when_infeasible must be 'reject' or 'first_exit', got {self.when_infeasible!r}")
        if self.plan_at not in ("mean", "quantile"):
            raise ValueError(f"plan_at must be 'mean' or 'quantile', got {self.plan_at!r}")
        if self.planner not in ("batch", "edf"):
            raise ValueError(f"planner must be 'batch' or 'edf', got {self.planner!r}")
        if self.slots_per_endpoint < 1 or self.max_queue < 1:
            raise ValueError("slots_per_endpoint and max_queue must be >= 1")


def allowed_exits(exits: list[int], req: Request, fixed_exit: int | None = None) -> list[int]:
    """The exits ``req`` may take, shallowest first: within its min/max, and only ``fixed_exit`` (-1: the deepest)
    when a baseline fixes one."""
    if req.options is not None:
        allowed = [e for e in exits if e in req.options]
    else:
        hi = req.max_exit if req.max_exit is not None else exits[-1]
        allowed = [e for e in exits if req.min_exit <= e <= hi]
    if fixed_exit is not None:
        fixed = exits[-1] if fixed_exit == -1 else fixed_exit
        allowed = [e for e in allowed if e == fixed]
    return allowed


# (request, endpoint, exit) -> seconds; the greedy-with-true-latencies baseline passes the true service times here
LatencyFn = Callable[[Request, str, int], float]


class Readiness:
    """What every planner shares: the checks before admission proper, and what happens once an admitted request's
    input is prepared (it joins the ready heap, earliest deadline first, from which dispatch takes it). Needs
    ``exits``, ``available``, ``allowed_exits``, ``_ready``, ``admit`` and ``prepared``."""

    def admissible(self, req: Request, now: float) -> tuple[list[int], float]:
        """(its allowed exits, its budget in seconds), or ``Rejected``: no exit in its range, no endpoint, or a
        deadline already passed."""
        allowed = self.allowed_exits(req)
        if not allowed:
            raise Rejected(INVALID_ARGUMENT, f"no exit between min_exit={req.min_exit} and max_exit={req.max_exit}; "
                                             f"this model has exits {self.exits[0]}..{self.exits[-1]}")
        if not self.available:
            raise Rejected(UNAVAILABLE, "no inference server is reachable right now")
        budget = req.deadline - now
        if budget <= 0:
            raise Rejected(DEADLINE_EXCEEDED, "the deadline had passed before the request was scheduled")
        return allowed, budget

    def mark_ready(self, req: Request, now: float) -> None:
        """The request's input is prepared: it may be dispatched from now on."""
        if req.state == "queued" and not req.ready:
            self.prepared(req, now)
            req.ready = True
            heapq.heappush(self._ready, (req.deadline, req.id, req))

    def submit(self, req: Request, now: float) -> None:
        """``admit`` and ``mark_ready`` at once (a request with nothing to prepare)."""
        self.admit(req, now)
        self.mark_ready(req, now)

    def set_available(self, endpoint: str, up: bool) -> None:
        """The gateway's health probe: ``endpoint`` answers (or not) from now on."""
        (self.available.add if up else self.available.discard)(endpoint)


class Scheduler(Readiness):
    def __init__(self, profiles: dict[str, LatencyProfile], config: SchedulerConfig | None = None,
                 latency_fn: LatencyFn | None = None, utility: dict[int, float] | None = None):
        """``utility``: what an answer of each exit is worth (the gateway's options: their AP). Without it a request
        takes the deepest exit that fits at the planning quantile; with it, of the exits that fit, the one of the
        highest expected utility, its worth times the chance that it is in time (``_in_time``): near the edge of a
        budget an exit that is a little better but probably late loses to one almost as good that is surely in time
        (at 256 and 384 px the top options differ by 0.003-0.03 AP)."""
        if not profiles:
            raise ValueError("the scheduler needs at least one endpoint")
        self.profiles = profiles
        self.utility = utility
        self.config = config or SchedulerConfig()
        self._latency_fn = latency_fn
        self.busy: dict[str, dict[int, Assignment]] = {name: {} for name in profiles}
        self.available: set[str] = set(profiles)  # endpoints that answer; the gateway's health probe keeps it
        self.exits = sorted(set.intersection(*(set(p.exits) for p in profiles.values())))
        self._tree = SlackTree()
        self._ready: list[tuple[float, int, Request]] = []  # heap of decoded requests (lazy deletion)
        self._basis: tuple | None = None  # what the queue's keys were computed with
        self._queued_variance = 0.0  # sum of the queued requests' variances (``safety``)
        self.demoted = 0  # requests that stopped being protected (late whatever happens)
        self.rescued = 0  # requests run at their first exit although it fitted only at the mean (``rescue``)
        self.probes = 0  # infeasible requests admitted to refresh a stale, slow profile (``probe_interval_ms``)
        self._last_probe = float("-inf")

    # -- the service-time model ------------------------------------------------------------------------
    def allowed_exits(self, req: Request) -> list[int]:
        return allowed_exits(self.exits, req, self.config.fixed_exit)

    def service_time(self, req: Request, endpoint: str, exit: int, expected: bool = False) -> float:
        """Seconds the request would take on ``endpoint``: at the planning quantile plus the margin, or its mean
        (``expected``) plus the per-call gap."""
        if self._latency_fn is not None:
            base = self._latency_fn(req, endpoint, exit)
        elif expected:
            base = self.profiles[endpoint].expected(exit)
        else:
            base = self.profiles[endpoint].predict(exit)
        return base * req.share + (self.config.gap_ms / 1000.0 if expected else self.margin())

    def margin(self) -> float:
        """Seconds an answer needs beyond its call (``margin_ms``). Adding the event loop's recent lag to it was
        tried: the lag of a burst is known only once the burst has been read, and it then refused nearly every
        request for seconds (tests/serving/test_gateway.py's burst of 200 failed with it)."""
        return self.config.margin_ms / 1000.0

    def _endpoints(self) -> list[str]:
        return sorted(self.available) if self.available else sorted(self.profiles)

    def _reference(self) -> tuple[str, dict[str, float], float]:
        """(fastest endpoint, speed of each relative to it, pooled capacity in slots of the fastest)."""
        deepest = self.exits[-1]
        means = {ep: self.profiles[ep].expected(deepest) for ep in self._endpoints()}
        ref = min(means, key=lambda ep: (means[ep], ep))
        speed = {ep: means[ref] / means[ep] for ep in means}
        return ref, speed, self.config.slots_per_endpoint * sum(speed.values())

    def _costs(self, req: Request, ref: str) -> tuple[float, float]:
        """(own planning seconds, expected work) of the request at its first allowed exit on ``ref``, its image's
        preparation included while it has not been prepared.

        Own time at the planning quantile, call by call, when the queue keeps no safety (``protect_z`` 0). With
        one, own time is its mean (plus the margin): the safety's standard deviations cover its own noise with the
        noise of the work before it, as one sum, where a quantile per call (decoding, then inference) would add
        up as if every call ran slow at once."""
        first = self.allowed_exits(req)[0]
        work = self.service_time(req, ref, first, expected=True) + self.config.prep_weight * req.prep_expected
        if self.config.protect_z:
            own = self.profiles[ref].expected(first) * req.share + self.margin() + req.prep_expected
        else:
            own = self.service_time(req, ref, first) + req.prep
        return own, work

    def _variance(self, req: Request, ref: str) -> float:
        """Variance (s^2) of the request's expected work at its first allowed exit, preparation included."""
        if not self.config.protect_z:
            return 0.0
        first = self.allowed_exits(req)[0]
        own = self.profiles[ref].spread(first) * req.share
        return own * own + self.config.prep_weight ** 2 * req.prep_variance

    def safety(self, extra_variance: float = 0.0) -> float:
        """Work (in the queue's units) every deadline keeps beyond the mean of the work before it: ``protect_z``
        standard deviations of the sum of everything queued and running, plus ``extra_variance``.

        The variance of the *whole* queue, not of the part ahead of each request: an upper bound that is exact for
        the last request and keeps every decision one lookup (the queue's deadline sums stay linear). Queues are
        short here (a few requests at the loads that matter), so what it over-reserves for the first is small."""
        if not self.config.protect_z:
            return 0.0
        variance = self._queued_variance + self._running_variance() + extra_variance
        return self.config.protect_z * max(variance, 0.0) ** 0.5

    def _running_variance(self) -> float:
        if not self.config.protect_z or self._latency_fn is not None:
            return 0.0
        return sum(self.profiles[ep].spread(a.exit) ** 2 for ep, per in self.busy.items() for a in per.values())

    def fastest(self, req: Request) -> float:
        """Planning seconds of the request alone, preparation included, at its first allowed exit on its fastest
        endpoint: its own time and safety (``_costs``, ``safety``) as if nothing else were queued or running."""
        first = self.allowed_exits(req)[0]
        if not self.config.protect_z:
            return min(self.service_time(req, ep, first) for ep in self._endpoints()) + req.prep
        ep = min(self._endpoints(), key=lambda e: self.profiles[e].expected(first))
        own, _ = self._costs(req, ep)
        return own + self.config.protect_z * self._variance(req, ep) ** 0.5

    def in_flight_work(self, now: float) -> float:
        """Expected work still running, in seconds of the fastest endpoint."""
        _, speed, _ = self._reference()
        work = 0.0
        for ep, per in self.busy.items():
            for a in per.values():
                elapsed = now - a.start
                if self._latency_fn is not None:
                    left = max(a.expected - elapsed, 0.0)
                else:
                    left = self.profiles[ep].remaining(a.exit, elapsed) + self.config.gap_ms / 1000.0
                work += left * speed.get(ep, 1.0)
        return work

    # -- keeping the queue's keys current ------------------------------------------------------------------
    def _tick(self, now: float) -> tuple[str, dict[str, float], float]:
        for p in self.profiles.values():
            p.tick(now)
        ref, speed, m = self._reference()
        p = self.profiles[ref]
        basis = (ref, m, p.ratio(), p.expected(self.exits[-1]))
        old = self._basis
        if old is None or old[:2] != basis[:2] or any(abs(b / a - 1) > self.config.drift for a, b in zip(old[2:], basis[2:])):
            self._rekey(ref, m)
            self._basis = basis
        return ref, speed, m

    def _rekey(self, ref: str, m: float) -> None:
        """Recompute every queued request's key with the current predictions (O(n log n); only on drift)."""
        queued = self._tree.items()
        self._tree.clear()
        self._queued_variance = 0.0
        for req in queued:
            self._insert(req, ref, m)

    def _insert(self, req: Request, ref: str, m: float) -> None:
        f, e = self._costs(req, ref)
        req.variance = self._variance(req, ref)
        self._queued_variance += req.variance
        self._tree.insert(req.key, e, m * (req.deadline - f), req, req.protected)

    def _remove(self, req: Request) -> None:
        if self._tree.remove(req.key):
            self._queued_variance -= req.variance
            if not self._tree.size:
                self._queued_variance = 0.0  # no drift of float sums across an idle moment

    def _demote_late(self, key, threshold: float) -> float:
        """Stop protecting queued requests (after ``key``; all when None) whose slack is below ``threshold``:
        they are late whatever is decided now, and protecting them would only make more requests late.
        Returns the smallest slack among the protected requests left."""
        while True:
            after = self._tree.around(key)[1] if key is not None else self._tree.min_slack
            if after >= threshold:
                return after
            node = self._tree.argmin_after(key)
            node.item.protected = False
            self._tree.set_protected(node.key, False)
            self.demoted += 1

    # -- admission --------------------------------------------------------------------------------------
    def admit(self, req: Request, now: float) -> None:
        """Reserve the request's place in the queue, or raise ``Rejected``. It runs once ``mark_ready``."""
        allowed, budget = self.admissible(req, now)
        ref, _, m = self._tick(now)
        fastest = self.fastest(req)
        if fastest > budget:
            if self.config.when_infeasible != "first_exit" and not self._probe(now, fastest, budget):
                prep = req.prep_expected if self.config.protect_z else req.prep  # as _costs counts it
                decoding = f", decoding its image {prep * 1e3:.1f} ms of it" if prep else ""
                raise Rejected(DEADLINE_EXCEEDED, f"a budget of {budget * 1e3:.1f} ms is below the fastest exit's "
                                                  f"predicted latency ({fastest * 1e3:.1f} ms{decoding})")
            req.best_effort = True
        if self._tree.size >= self.config.max_queue:
            raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: {self._tree.size} requests are queued")
        f, e = self._costs(req, ref)
        threshold = m * now + self.in_flight_work(now) + self.safety(self._variance(req, ref))
        ahead, _ = self._tree.around(req.key)
        if not req.best_effort and m * (req.deadline - f) - ahead < threshold:
            running, safety = self.in_flight_work(now), threshold - m * now - self.in_flight_work(now)
            raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: about {ahead / m * 1e3:.0f} ms of queued work, "
                                               f"{running / m * 1e3:.0f} ms in flight and {safety / m * 1e3:.0f} ms "
                                               f"for their noise leave no exit within the {budget * 1e3:.0f} ms "
                                               f"budget (this request: {f * 1e3:.0f} ms)")
        if self.config.protect_queue:
            behind = self._demote_late(req.key, threshold)
            if behind - e < threshold:
                raise Rejected(RESOURCE_EXHAUSTED, "overloaded: admitting this request would make a queued request "
                                                   "miss its deadline")
        req.state, req.protected = "queued", not req.best_effort
        self._insert(req, ref, m)

    def narrow(self, req: Request, now: float, groups: list[tuple[list[int], float, float, float]]) -> int:
        """Before an admitted request's input is prepared, choose which group of its exits it will take: the
        gateway's groups are input sizes (an image is letterboxed to one size, so the size is chosen before
        decoding; the exit at that size is still chosen at dispatch). ``groups``: (exit ids, prep, prep_expected,
        prep_variance) per group, its preparation as ``Request`` counts it. Returns the chosen group's index and
        sets the request's exits and preparation to it.

        The choice is the group of the deepest exit (ids are ordered by cost, and served options by accuracy with
        it) that admission would accept now: its own time at that exit and the queue ahead of it fit its deadline,
        and the queued requests behind it keep theirs. None fits (a best-effort request, or the queue grew since
        admission): the group of its cheapest exit, which admission reserved."""
        if req.state != "queued":
            raise ValueError("only an admitted request that is not prepared yet can be narrowed")
        ref, _, m = self._tick(now)
        self._remove(req)
        chosen = min(range(len(groups)), key=lambda i: min(groups[i][0]))
        if not req.best_effort:
            in_flight = self.in_flight_work(now)
            ahead, _ = self._tree.around(req.key)  # the work due before it: the same for every candidate
            best = None  # (expected utility, group)
            for exit, i in sorted(((e, i) for i, g in enumerate(groups) for e in g[0]), reverse=True):
                req.options = [exit]
                req.prep, req.prep_expected, req.prep_variance = groups[i][1:]
                f, e = self._costs(req, ref)
                safety = self.safety(self._variance(req, ref))
                threshold = m * now + in_flight + safety
                slack = m * (req.deadline - f) - ahead - threshold  # beyond the safety
                if slack < 0:
                    continue
                if self.config.protect_queue and self._demote_late(req.key, threshold) - e < threshold:
                    continue
                if self.utility is None:
                    chosen = i
                    break
                sd = safety / self.config.protect_z if self.config.protect_z else 0.0
                score = self.utility.get(exit, 0.0) * (_PHI(slack / sd + self.config.protect_z) if sd > 0 else 1.0)
                if best is None or score > best[0]:
                    best = (score, i)
            if best is not None:
                chosen = best[1]
        req.options = list(groups[chosen][0])
        req.prep, req.prep_expected, req.prep_variance = groups[chosen][1:]
        self._insert(req, ref, m)
        return chosen

    def _probe(self, now: float, fastest: float, budget: float) -> bool:
        """Whether to admit an infeasible request anyway to learn whether the endpoints are still as slow as the
        profiles say (``probe_interval_ms``): only one whose budget the endpoint's prior speed would fit (a budget
        that nothing could meet teaches nothing)."""
        interval = self.config.probe_interval_ms / 1000.0
        if interval <= 0 or now - self._last_probe < interval:
            return False
        slowdown = max(self.profiles[ep].stale_slowdown(now, interval) for ep in self._endpoints())
        if slowdown <= 1.0 or fastest / slowdown > budget:
            return False
        self._last_probe = now
        self.probes += 1
        return True

    def prepared(self, req: Request, now: float) -> None:
        """The request's input is prepared: its preparation is no longer work ahead of anyone, nor its own."""
        if req.state == "queued" and (req.prep or req.prep_expected or req.prep_variance):
            ref, _, m = self._tick(now)
            self._remove(req)
            req.prep = req.prep_expected = req.prep_variance = 0.0
            self._insert(req, ref, m)

    @property
    def queued(self) -> int:
        """Requests admitted and not yet started (decoding ones included)."""
        return self._tree.size

    # -- dispatch -----------------------------------------------------------------------------------------
    def free_endpoints(self) -> list[str]:
        return [ep for ep, per in self.busy.items()
                if ep in self.available and len(per) < self.config.slots_per_endpoint]

    def dispatch(self, now: float) -> tuple[list[Assignment], list[Request]]:
        """Start ready requests on free slots. Returns (assignments, expired requests to fail)."""
        started, expired, waiting = [], [], []
        if not self._ready or not self.free_endpoints():
            return started, expired
        ref, speed, m = self._tick(now)
        while self._ready and self.free_endpoints():
            _, _, req = heapq.heappop(self._ready)
            if req.state != "queued":
                continue  # cancelled or failed while waiting
            self._remove(req)
            choice = self._choose(req, now, speed, m)
            if choice == "wait":
                waiting.append(req)
                continue
            if choice is None:
                req.state = "gone"
                expired.append(req)
                continue
            endpoint, exit, predicted = choice
            req.state = "running"
            a = Assignment(req, endpoint, exit, now, predicted, self.service_time(req, endpoint, exit, expected=True))
            self.busy[endpoint][req.id] = a
            started.append(a)
        for req in waiting:  # back in line: a faster endpoint frees in time for them
            self._insert(req, ref, m)
            heapq.heappush(self._ready, (req.deadline, req.id, req))
        return started, expired

    def _choose(self, req: Request, now: float, speed: dict[str, float], m: float):
        """(endpoint, exit, predicted seconds) for ``req``, ``"wait"``, or None when it cannot make it."""
        allowed = self.allowed_exits(req)
        free = self.free_endpoints()
        threshold = m * now + self.in_flight_work(now) + self.safety()
        behind = None
        if self.config.protect_queue and self._tree.size:
            cheapest = min(self.service_time(req, ep, allowed[0], expected=True) * speed.get(ep, 1.0) for ep in free)
            behind = self._demote_late(None, threshold + cheapest)
        best = None  # (endpoint, exit, predicted seconds, score)
        for ep in free:
            for exit in reversed(allowed):
                s = self.service_time(req, ep, exit)
                if now + s > req.deadline and not (req.best_effort and exit == allowed[0]):
                    continue
                if behind is not None and exit != allowed[0]:
                    work = self.service_time(req, ep, exit, expected=True) * speed.get(ep, 1.0)
                    if behind < threshold + work:
                        continue
                score = self._worth(req, ep, exit, now)
                if best is None or (score, -s) > (best[3], -best[2]):
                    best = (ep, exit, s, score)
                if self.utility is None:
                    break  # the deepest that fits
        if best is not None:
            return best[:3]
        # Nothing free fits. A busy, faster endpoint may still free up in time: wait for it.
        for ep in self.available:
            per = self.busy[ep]
            if ep in free or not per:
                continue
            soonest = min(self.profiles[ep].remaining(a.exit, now - a.start) if self._latency_fn is None
                          else max(a.expected - (now - a.start), 0.0) for a in per.values())
            if now + soonest + self.service_time(req, ep, allowed[0]) <= req.deadline:
                return "wait"
        ep = min(free, key=lambda e: self.service_time(req, e, allowed[0]))
        if self.config.when_infeasible == "first_exit":
            req.best_effort = True
            return ep, allowed[0], self.service_time(req, ep, allowed[0])
        if self.config.rescue and now + self.service_time(req, ep, allowed[0], expected=True) <= req.deadline:
            self.rescued += 1
            return ep, allowed[0], self.service_time(req, ep, allowed[0])
        return None

    def _worth(self, req: Request, endpoint: str, exit: int, now: float) -> float:
        """What running ``exit`` now is worth: the exit itself (deeper is better) without utilities, else its utility
        times the chance that it is in time (``_in_time``)."""
        if self.utility is None or self._latency_fn is not None:
            return float(exit)
        return self.utility.get(exit, 0.0) * self._in_time(req, endpoint, exit, now)

    def _in_time(self, req: Request, endpoint: str, exit: int, now: float) -> float:
        """The chance that ``exit`` started now ends by the request's deadline: its service time as a normal of the
        profile's mean and spread, the margin added to the mean."""
        p = self.profiles[endpoint]
        mean = p.expected(exit) * req.share + self.margin()
        sd = p.spread(exit) * req.share
        left = req.deadline - now - mean
        return _PHI(left / sd) if sd > 0 else float(left >= 0)

    # -- completion and cancellation -------------------------------------------------------------------------
    def complete(self, a: Assignment, now: float, latency: float | None = None, censored: bool = False) -> None:
        """A dispatched request finished (or failed, ``censored``): ``latency`` seconds update its endpoint."""
        self.busy[a.endpoint].pop(a.request.id, None)
        a.request.state = "gone"
        if latency is not None and self._latency_fn is None:
            self.profiles[a.endpoint].observe(a.exit, latency, now, censored=censored)

    def progress(self, req: Request, share: float, now: float) -> None:
        """Part of an admitted request's work is done outside the queue's view (progressive execution runs its
        first stage and says so): its reservation keeps ``share`` of its work, what it still needs for an answer."""
        if req.state != "queued" or share >= req.share:
            return
        ref, _, m = self._tick(now)
        self._remove(req)
        req.share = max(share, 0.0)
        self._insert(req, ref, m)

    def cancel(self, req: Request) -> bool:
        """Drop an admitted request that has not started (its client went away, or its input was bad)."""
        if req.state != "queued":
            return False
        self._remove(req)
        req.state = "gone"  # its entry in the ready heap, if any, is skipped when popped
        return True

    def drain(self) -> list[Request]:
        """Remove and return every request that has not started (no endpoint is left to run them)."""
        out = [r for r in self._tree.items()]
        self._tree.clear()
        self._queued_variance = 0.0
        self._ready.clear()
        for r in out:
            r.state = "gone"
        return out
