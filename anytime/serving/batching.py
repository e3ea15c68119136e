"""The upfront gateway's planner: admission by the cheapest exit, the exit chosen at dispatch with the time actually
left, and ready requests for one exit sent to Triton as one batch.

Why it was built (issue "The scheduler earns its place", ``benchmarks/peers.py``): a user who calls Triton's exit
models directly gets Triton's dynamic batching for free and refuses nothing. The EDF scheduler sends one image per
call, keeps 1.64 standard deviations of the whole queue in reserve and plans at admission: it refused requests that
exit 1 direct answered in time. ``--planner batch`` selects this planner; EDF stays the default, since on
``benchmarks/peers.py`` the two met the same budgets over its ten rows (docs/results.md).

Pure logic on an injected clock, like ``anytime.serving.scheduler`` (whose ``Request`` it plans):

- **Admission** (``admit``): a request is refused only when no exit, the cheapest included, can answer it in time
  *given the queue*: ``plan`` replays, at mean latencies, the admitted requests due before it (and it) being decoded
  and then served in batches at their cheapest exits on the slots as they free (with no queue ahead, its decoding
  may be a standard deviation faster than its mean). A request due earlier than queued
  ones is also refused when it would make one of them late that would otherwise be in time.
- **Dispatch** (``dispatch``): when a slot is free and requests are ready, the earliest deadline leads a batch. The
  batch takes an even share of the ready requests over the free slots (so an idle stack runs requests side by side
  and a loaded one batches them), at most ``max_batch``; never waiting for batch-mates, so no member starts later
  than it would alone. Its exit is the deepest whose latency at the planning quantile, at that batch size, still
  ends by the leader's deadline, unless a shallower one leaves fewer of the requests behind it late (``plan`` again,
  at the planning quantile: admission gives a request its chance at the mean; deepening a call must not take it
  away).
  A leader that no exit fits at the quantile runs its cheapest exit when that fits at the mean and no other
  request is ready; else it expires.
- **Latency** per (exit, batch size): the endpoint's ``LatencyProfile`` with a prior per batch size (measured at
  start-up), one noise factor learnt online from calls of every exit and size.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

from anytime.serving.latency import LatencyProfile
from anytime.serving.scheduler import (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, Readiness, Rejected, Request,
                                       SchedulerConfig, allowed_exits)

_calls = itertools.count()


@dataclass(frozen=True, eq=False)
class Call:
    """One Triton call: ``requests`` (one image each, in this order in the batch) at one exit on one endpoint."""

    requests: tuple[Request, ...]
    endpoint: str
    exit: int
    start: float
    predicted: float  # seconds at the planning quantile, margin included
    expected: float  # mean seconds
    id: int = field(default_factory=lambda: next(_calls))

    @property
    def batch(self) -> int:
        return len(self.requests)


class BatchScheduler(Readiness):
    """Admission, batching and exit choice for upfront execution; times in seconds on the caller's clock."""

    def __init__(self, profiles: dict[str, LatencyProfile], config: SchedulerConfig | None = None,
                 max_batch: int = 8, decode_workers: int = 2):
        if not profiles:
            raise ValueError("the scheduler needs at least one endpoint")
        self.profiles = profiles
        self.config = config or SchedulerConfig()
        self.max_batch = max(1, int(max_batch))
        self.decode_workers = max(1, int(decode_workers))
        self.busy: dict[str, dict[int, Call]] = {name: {} for name in profiles}
        self.available: set[str] = set(profiles)
        self.exits = sorted(set.intersection(*(set(p.exits) for p in profiles.values())))
        self._waiting: dict[int, Request] = {}  # admitted, not started: decoding or ready
        self._ready: list[tuple[float, int, Request]] = []  # heap of decoded requests (lazy deletion)
        self.rescued = 0  # leaders run at their cheapest exit although it fitted only at the mean
        self.expired = 0

    # -- the model --------------------------------------------------------------------------------------------
    def allowed_exits(self, req: Request) -> list[int]:
        return allowed_exits(self.exits, req, self.config.fixed_exit)

    def margin(self) -> float:
        return self.config.margin_ms / 1e3

    def _endpoints(self) -> list[str]:
        return sorted(self.available) if self.available else sorted(self.profiles)

    def _fastest(self) -> str:
        deepest = self.exits[-1]
        return min(self._endpoints(), key=lambda ep: (self.profiles[ep].expected(deepest), ep))

    def _slot_times(self, now: float, extra: Call | None = None) -> list[float]:
        """When each slot of the available endpoints is expected to free (now for a free one)."""
        times = []
        for ep in self._endpoints():
            calls = list(self.busy[ep].values()) + ([extra] if extra is not None and extra.endpoint == ep else [])
            p = self.profiles[ep]
            times += [now + p.remaining(c.exit, now - c.start, c.batch) for c in calls]
            times += [now] * max(self.config.slots_per_endpoint - len(calls), 0)
        return sorted(times)

    def plan(self, requests: list[Request], now: float, extra: Call | None = None,
             at_quantile: bool | None = None) -> dict[int, float]:
        """Expected finish time (answer built) of each of ``requests`` at its cheapest exit: they are decoded (the
        undecoded ones, earliest deadline first, on ``decode_workers`` threads) and then served earliest deadline
        first, each freed slot taking a batch of those ready by then, at mean latencies or, with ``at_quantile``
        (default: ``SchedulerConfig.plan_at``), at the planning quantile. ``extra``: a call about to start, counted
        as running."""
        order = sorted(requests, key=lambda r: r.key)
        if at_quantile is None:
            at_quantile = self.config.plan_at == "quantile"
        decoders = [now] * self.decode_workers
        ready_at = {}
        for r in order:
            if r.ready:
                ready_at[r.id] = now
            else:
                t = heapq.heappop(decoders)
                ready_at[r.id] = t + (r.prep if at_quantile else r.prep_expected)
                heapq.heappush(decoders, ready_at[r.id])
        slots = self._slot_times(now, extra)
        heapq.heapify(slots)
        ep = self._fastest()
        p = self.profiles[ep]
        finish: dict[int, float] = {}
        i = 0
        while i < len(order):
            free = heapq.heappop(slots)
            start = max(free, ready_at[order[i].id])
            batch = [order[i]]
            while len(batch) < self.max_batch and i + len(batch) < len(order) and \
                    ready_at[order[i + len(batch)].id] <= start:
                batch.append(order[i + len(batch)])
            exit = max(self.allowed_exits(r)[0] for r in batch)
            end = start + (p.predict(exit, len(batch)) if at_quantile else p.expected(exit, len(batch)))
            for r in batch:
                finish[r.id] = end + self.margin()
            heapq.heappush(slots, end)
            i += len(batch)
        return finish

    # -- admission ----------------------------------------------------------------------------------------------
    def admit(self, req: Request, now: float) -> None:
        """Reserve the request's place, or raise ``Rejected``. It runs once ``mark_ready``."""
        allowed, budget = self.admissible(req, now)
        for p in self.profiles.values():
            p.tick(now)
        alone = req.prep_expected + self.profiles[self._fastest()].expected(allowed[0]) + self.margin()
        if alone - req.prep_variance ** 0.5 > budget:  # even with its decoding a deviation faster (see below)
            if self.config.when_infeasible != "first_exit":
                decoding = f", decoding its image {req.prep_expected * 1e3:.1f} ms of it" if req.prep_expected else ""
                raise Rejected(DEADLINE_EXCEEDED, f"a budget of {budget * 1e3:.1f} ms is below the fastest exit's "
                                                  f"expected latency ({alone * 1e3:.1f} ms{decoding})")
            req.best_effort = True
        if len(self._waiting) >= self.config.max_queue:
            raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: {len(self._waiting)} requests are queued")
        if not req.best_effort:
            queued = list(self._waiting.values())
            ahead = [r for r in queued if r.key < req.key]
            behind = [r for r in queued if r.key > req.key]
            finish = self.plan(ahead + [req], now)
            # Without a queue to protect (fewer ahead than slots), a request whose own decoding may well be faster
            # than its mean gets its chance: admitted when it fits with its decoding one standard deviation
            # faster; if it turns out slow it expires at dispatch, having cost only its decoding, which an idle
            # stack can spare. With a queue, the mean decides, so overload turns into refusals.
            slack = req.prep_variance ** 0.5 if len(ahead) < self._slots() else 0.0
            if finish[req.id] - slack > req.deadline:
                raise Rejected(RESOURCE_EXHAUSTED, f"overloaded: its answer would come about "
                                                   f"{(finish[req.id] - now) * 1e3:.0f} ms after arrival, after the "
                                                   f"{len(ahead)} requests due before it, against a budget of "
                                                   f"{budget * 1e3:.0f} ms")
            if behind and self.config.protect_queue:
                without = self.plan(queued, now)
                with_it = self.plan(queued + [req], now)
                if any(with_it[r.id] > r.deadline >= without[r.id] for r in behind):
                    raise Rejected(RESOURCE_EXHAUSTED, "overloaded: admitting this request would make a queued "
                                                       "request miss its deadline")
        req.state = "queued"
        self._waiting[req.id] = req

    def prepared(self, req: Request, now: float) -> None:
        """Its input is prepared: no decoding left to plan for it."""
        req.prep = req.prep_expected = req.prep_variance = 0.0

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # -- dispatch -------------------------------------------------------------------------------------------------
    def _slots(self) -> int:
        return self.config.slots_per_endpoint * max(len(self.available), 1)

    def free_slots(self) -> dict[str, int]:
        return {ep: self.config.slots_per_endpoint - len(self.busy[ep]) for ep in sorted(self.available)
                if len(self.busy[ep]) < self.config.slots_per_endpoint}

    def _pop_ready(self) -> Request | None:
        while self._ready:
            _, _, req = heapq.heappop(self._ready)
            if req.state == "queued":
                return req
        return None

    def _ready_in_order(self) -> list[Request]:
        return [r for _, _, r in sorted(self._ready) if r.state == "queued"]

    def dispatch(self, now: float) -> tuple[list[Call], list[Request]]:
        """Start batches on free slots. Returns (calls started, requests expired)."""
        started: list[Call] = []
        expired: list[Request] = []
        for p in self.profiles.values():
            p.tick(now)
        while self.free_slots():
            leader = self._pop_ready()
            if leader is None:
                break
            call = self._plan_call(leader, now)
            if call is None:
                self._waiting.pop(leader.id, None)
                leader.state = "gone"
                self.expired += 1
                expired.append(leader)
                continue
            for r in call.requests:
                self._waiting.pop(r.id, None)
                r.state = "running"
            self.busy[call.endpoint][call.id] = call
            started.append(call)
        return started, expired

    def _plan_call(self, leader: Request, now: float) -> Call | None:
        """The call ``leader`` leads now (its batch-mates taken from the ready queue), or None: it cannot make it."""
        free = self.free_slots()
        others = [r for r in self._ready_in_order() if r is not leader]
        share = math.ceil((len(others) + 1) / sum(free.values()))
        target = max(1, min(self.max_batch, share))
        allowed = self.allowed_exits(leader)
        ep = min(free, key=lambda e: (self.profiles[e].expected(self.exits[-1]), e))
        p = self.profiles[ep]
        candidates = []  # (exit, members)
        for exit in reversed(allowed):
            mates = [r for r in others if exit in self.allowed_exits(r)][: target - 1]
            size = len(mates) + 1
            while size >= 1 and now + p.predict(exit, size) + self.margin() > leader.deadline:
                size -= 1
            if size >= 1:
                candidates.append((exit, (leader, *mates[: size - 1])))
        if not candidates:
            # Rescue: its cheapest exit fits only at the mean. Run it when it takes a slot from nobody (no other
            # request is ready): a probable answer beats a certain expiry, but under a queue the slot is better
            # spent on a request that fits at the quantile.
            first = allowed[0]
            if leader.best_effort or not others and now + p.expected(first, 1) + self.margin() <= leader.deadline:
                self.rescued += 0 if leader.best_effort else 1
                return self._call((leader,), ep, first, now)
            return None
        if len(candidates) == 1 or not self.config.protect_queue:
            exit, members = candidates[0]
            return self._call(members, ep, exit, now)
        # The deepest exit, unless a shallower one leaves fewer of the requests behind late.
        rest = [r for r in self._waiting.values() if r is not leader]
        best, best_late = None, None
        for exit, members in candidates:  # deepest first
            call = self._call(members, ep, exit, now)
            behind = [r for r in rest if r not in members]
            finish = self.plan(behind, now, extra=call, at_quantile=True) if behind else {}
            late = sum(1 for r in behind if finish[r.id] > r.deadline)
            if best is None or late < best_late:
                best, best_late = call, late
            if late == 0:
                break
        return best

    def _call(self, members: tuple[Request, ...], ep: str, exit: int, now: float) -> Call:
        p = self.profiles[ep]
        b = len(members)
        return Call(tuple(members), ep, exit, now, p.predict(exit, b) + self.margin(), p.expected(exit, b))

    # -- completion and cancellation ----------------------------------------------------------------------------
    def complete(self, call: Call, now: float, latency: float | None = None, censored: bool = False) -> None:
        """A call finished (or failed, ``censored``): ``latency`` seconds teach its endpoint's profile."""
        self.busy[call.endpoint].pop(call.id, None)
        for r in call.requests:
            r.state = "gone"
        if latency is not None:
            self.profiles[call.endpoint].observe(call.exit, latency, now, batch=call.batch, censored=censored)

    def cancel(self, req: Request) -> bool:
        """Drop an admitted request that has not started (its client went away, or its image was bad)."""
        if req.state != "queued":
            return False
        self._waiting.pop(req.id, None)
        req.state = "gone"  # its entry in the ready heap, if any, is skipped when popped
        return True

    def drain(self) -> list[Request]:
        out = list(self._waiting.values())
        self._waiting.clear()
        self._ready.clear()
        for r in out:
            r.state = "gone"
        return out
