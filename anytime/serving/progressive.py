"""Progressive execution: every request runs stage by stage, the next stage only if it still fits the deadline,
a head only for the exits that are wanted, and requests waiting at the same step share one call (iteration-level
batching, as in Orca for LLM serving).

Pure logic on an injected clock, like the upfront scheduler: the Triton model that runs the graphs
(``anytime.export.triton_progressive_model``) asks it what to run next, and tests drive it with a simulated clock.

A stage is two steps: its *features* (stage 1: backbone and pyramid network 1; stage k: pyramid network k) and its
*head* (exit k's class and box head and NMS on those features). Heads are lazy: a RetinaNet head runs on every
level and costs about three pyramid networks of the default model, so running every exit's head on the way to
exit 4 costs 2.2x the multiply-adds of exit 4 alone (``anytime info``). A request that will go deeper skips the
head of the stage it just finished; a stream of refinements (``every_exit``) runs every head.

Admission, when a request arrives (``add``): the gateway has admitted it against its own estimate of the load,
but only the engine sees how fast the stages run under that load and which requests past their first stage still
need a head. A request whose fastest plausible first exit misses its budget fails at once (the budget's fault,
whatever the load). Otherwise, unless it is alone, it is refused as overload when its first exit, served earliest
deadline first after the call running now and the mandatory work (below) of the requests due before it, misses at
the median with a safety for the noise of that work (``protect_z`` standard deviations of its sum), or when it
would make a waiting request's answer late.

Decisions, each time the executor is free (``plan``):

- **Going on or answering.** After stage k's features, a request goes on to stage k+1 when stage k+1's features
  and head still fit its deadline (each at the planning quantile); otherwise it runs head k, its answer. While a
  request has no answer yet, it runs head k first when going on would not survive a slow call (the insurance
  quantile) or the work that waits before it (earlier deadlines): one head, paid only when the slack is small,
  so that a wrong guess or a burst costs depth, not the answer.
- **Giving up.** A waiting request whose next step can no longer fit falls back: to the head of the features it
  has, else to the exit it has, else (no exit at all) it has failed. An admitted request without an answer is
  given up only when even the median prediction misses (a first exit is the difference between an answer and
  none); a request with one goes deeper only at the planning quantile. A request alone in the engine is tried
  while the fastest plausible time fits: then trying costs nobody else anything.
- **Order.** Earliest deadline first across steps, with answers before depth: a request's *mandatory* work is
  what it needs for an answer (its first useful exit, or the head of features it may answer with), the rest is
  optional. An optional step (deeper features of a request that has or could have an answer, or a deeper head of
  one that has an answer) runs only when it leaves every waiting request's mandatory work in time, served earliest
  deadline first; otherwise the earliest-deadline mandatory step runs instead (slack stealing, ``_harmed``).
  Admission counts the same mandatory work, so depth does not cost an admitted request its answer.
- **Batching.** At the chosen step, the call takes the batch size under which the most waiting requests reach
  their next useful exit in time when the queue is served in calls of that size (a larger batch takes longer, so
  it can block the requests behind it past their deadlines; among sizes that serve as many, the one with the
  earliest exits on the whole, which on a CPU is the smaller one), and among the requests that fit that size, the
  earliest deadlines. Under overload this serves the requests that can still make it rather than the ones about
  to expire.
- **Answering early.** A request that has an exit and could start its next step only too late (after the call
  being started) is answered at once rather than at its deadline.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from anytime.serving.latency import LatencyProfile

_seq = itertools.count()
FEATURES, HEAD = "features", "head"
# why ``add`` turned a request away, by its state; the gateway answers DEADLINE_EXCEEDED for the first (the budget
# is too small), RESOURCE_EXHAUSTED for the second (the load)
REFUSED = {"failed": "no exit can be computed within the budget",
           "refused": "overloaded: the work queued before it leaves no first exit within the budget"}


class Need(NamedTuple):
    """What a request's mandatory steps cost (``StageEngine._need``): its share of their calls' mean, ``work`` (what
    the requests after it wait), and that share's ``variance``; and the steps alone, ``own`` (at the median) and
    ``own_variance`` (what its own answer waits)."""

    work: float
    variance: float
    own: float
    own_variance: float


class Step(NamedTuple):
    """One graph call: stage ``level``'s features, or exit ``level``'s head."""

    kind: str
    level: int


def step_key(step: Step, num_stages: int) -> int:
    """The step's entry in the latency profile: stage k's features are k, exit k's head num_stages + k."""
    return step.level if step.kind == FEATURES else num_stages + step.level


@dataclass(eq=False)
class Job:
    """One request inside the engine."""

    deadline: float  # on the engine's clock (seconds)
    arrival: float
    max_exit: int
    min_exit: int = 1
    every_exit: bool = False  # a stream of refinements: every exit's head on the way, not only the answer's
    payload: Any = None  # the executor's: the request's sender, and the features its last stage produced
    next: Step = Step(FEATURES, 1)  # the step it waits for or runs
    features: int = 0  # deepest stage whose features are computed (0: none)
    exit: int = 0  # deepest exit whose detections are computed (0: none)
    state: str = "waiting"  # waiting -> running -> waiting ... -> done | failed | cancelled
    id: int = field(default_factory=lambda: next(_seq))

    @property
    def answered(self) -> bool:
        """Whether it has a useful exit (one it may be answered with)."""
        return self.exit >= self.min_exit


@dataclass
class Plan:
    """What to do now: run ``step`` on ``jobs`` (if any), and settle ``finished`` (stopped with their exit) and
    ``failed`` (no exit could be computed in time)."""

    step: Step | None = None
    jobs: list[Job] = field(default_factory=list)
    finished: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)


class StageEngine:
    def __init__(self, profile: LatencyProfile, num_stages: int, max_batch: int = 8, margin_s: float = 0.001,
                 hope_quantile: float = 0.5, insure_quantile: float = 0.99, alone_quantile: float = 0.05,
                 protect_z: float = 1.64, optional_heads: bool = True):
        # protect_z 1.64 (95% one-sided for a normal sum): on the real clock, with upfront in the same runs, it kept
        # 86-90% of admitted requests in time at 80% load against 69-79% without it, and met as many in all
        # (README, "A safety for the noise of the queue")
        # The profile's "exits" are steps (``step_key``; cumulative=False), per batch size as measured.
        self.profile = profile
        self.num_stages = num_stages
        self.max_batch = max(1, int(max_batch))
        self.lookahead = 4 * self.max_batch  # requests a batch-size decision looks at (bounds its cost)
        self.margin = margin_s  # what an answer needs after its head: sending it, the gateway's reply
        self.hope_quantile, self.insure_quantile, self.alone_quantile = hope_quantile, insure_quantile, alone_quantile
        # standard deviations of the work before a request's answer (and of its own) that its slack must keep
        # (see _harmed): the work of several requests ahead is a sum of calls whose noise partly averages out
        self.protect_z = protect_z
        # whether the head of a request that has an answer is depth (run only in the slack, ``_harmed``) rather than
        # work that runs in its deadline's turn unchecked; False only to compare (benchmarks/stage_engine_sim.py)
        self.optional_heads = optional_heads
        steps = [Step(FEATURES, k) for k in range(1, num_stages + 1)] + [Step(HEAD, k) for k in range(1, num_stages + 1)]
        # features before heads: a request that falls back to its head moves to a queue that plan() looks at later
        self._queues: dict[Step, list[tuple[float, int, Job]]] = {s: [] for s in steps}
        self.waiting = 0
        self.running = 0  # requests in the call being run
        self.busy_until = 0.0  # when the call being run is expected to end
        self.step_runs = {s: 0 for s in steps}
        # Predictions and paths, cached while the profile stays the same (``LatencyProfile.version``): a decision
        # asks for the same few step times hundreds of times, and it runs on the cores the stages run on.
        self._memo: dict[tuple, float] = {}
        self._memo_version = -1
        self._paths: dict[tuple[Step, int], tuple[Step, ...]] = {}

    # -- the latency model ---------------------------------------------------------------------------------
    def key(self, step: Step) -> int:
        return step_key(step, self.num_stages)

    def predict(self, step: Step, batch: int = 1, quantile: float | None = None) -> float:
        return self._cached((step, batch, quantile), lambda: self.profile.predict(self.key(step), batch, quantile))

    def expected(self, step: Step, batch: int = 1) -> float:
        """Mean seconds of a call of ``step`` at ``batch``."""
        return self._cached((step, batch, "mean"), lambda: self.profile.expected(self.key(step), batch))

    def spread(self, step: Step, batch: int = 1) -> float:
        """Standard deviation of a call of ``step`` at ``batch`` (seconds)."""
        return self._cached((step, batch, "sd"), lambda: self.profile.spread(self.key(step), batch))

    def _cached(self, key: tuple, compute) -> float:
        """``compute()``, computed once while the latency profile is unchanged."""
        if self._memo_version != self.profile.version:
            self._memo.clear()
            self._memo_version = self.profile.version
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = compute()
        return value

    def observe(self, step: Step, batch: int, seconds: float, now: float) -> None:
        self.profile.observe(self.key(step), seconds, now, batch=batch)

    def _path(self, job: Job) -> tuple[Step, ...]:
        """The steps from the job's next one to its next useful exit (every stage up to ``min_exit``)."""
        key = (job.next, job.min_exit)
        path = self._paths.get(key)
        if path is None:
            if job.next.kind == HEAD:
                path = (job.next,)
            else:
                last = max(job.next.level, job.min_exit)
                path = tuple(Step(FEATURES, k) for k in range(job.next.level, last + 1)) + (Step(HEAD, last),)
            self._paths[key] = path
        return path

    def _time_to(self, job: Job, batch: int = 1, quantile: float | None = None) -> float:
        """Seconds until ``job`` has its next useful exit, its next step at ``batch``."""
        first, *rest = self._path(job)
        return self.predict(first, batch, quantile) + self._tail(rest, quantile)

    def _tail(self, rest, quantile: float | None = None, batch: int = 1) -> float:
        """Seconds the steps ``rest`` take after the current one, and the answer after them; ``batch``: the
        requests that share the current call go on together."""
        return self._cached(("tail", tuple(rest), quantile, batch),
                            lambda: sum(self.predict(s, batch, quantile) for s in rest) + self.margin)

    def _fits(self, job: Job, start: float) -> bool:
        """Whether the job's next useful exit, started at ``start``, is ready by its deadline: at the planning
        quantile once it has an answer, at the median while it has none (then trying is its only chance), and
        at the fastest plausible (``alone_quantile``) when it is alone in the engine (trying then costs no other
        request anything)."""
        if job.answered:
            quantile = None
        elif self._alone(job):
            quantile = self.alone_quantile
        else:
            quantile = self.hope_quantile
        return start + self._time_to(job, 1, quantile) <= job.deadline

    def _alone(self, job: Job) -> bool:
        """Whether no request but ``job`` is waiting or running in the engine."""
        return self.running == 0 and self.waiting - (job.state == "waiting") == 0

    # -- requests -------------------------------------------------------------------------------------------
    def add(self, job: Job, now: float) -> bool:
        """Queue a new request at its first stage, or refuse it (False): ``job.state`` is "failed" when its budget
        cannot give it a first exit even at the fastest plausible speed, "refused" when the load leaves no room for
        one (``_room_for``)."""
        self.profile.tick(now)
        job.max_exit = min(job.max_exit, self.num_stages)
        job.next, job.state = Step(FEATURES, 1), "new"
        if job.min_exit > job.max_exit or now + self._time_to(job, 1, self.alone_quantile) > job.deadline:
            job.state = "failed"  # not even the fastest plausible time fits: the budget, whatever the load
            return False
        if not self._room_for(job, now):
            job.state = "refused"
            return False
        self._push(job)
        return True

    def _room_for(self, job: Job, now: float) -> bool:
        """Admission against the load the engine sees, which the gateway's admission only estimates (it never sees
        how fast the stages run under load, nor the heads that requests past their first stage still need): the
        new request's answer, served earliest deadline first after the call running now and the mandatory work of
        the requests due before it, must end in time at the median (the quantile at which an admitted request is
        kept: at the planning quantile this engine refused twice the requests the upfront gateway sheds, on the
        same trace) plus a safety for the noise of that work (``_safety``), and it must make no waiting request's
        answer late. Alone, it is tried while its fastest plausible time fits (``add``): then trying costs nobody
        anything."""
        if self._alone(job):
            return True
        start = max(now, self.busy_until) if self.running else now
        order, need = self._answers(job)
        before, var = start, 0.0
        for j in order:
            if j is job:
                break
            before += need[j.id].work
            var += need[j.id].variance
        if self._answer_end(before, var, need[job.id]) > job.deadline:
            return False
        mine = (job.deadline, job.id)
        return not any((j.deadline, j.id) > mine for j in self._harmed(need[job.id].work, start))

    def cancel(self, job: Job) -> None:
        """The client went away: drop the request wherever it is (lazily, when its queue reaches it)."""
        if job.state == "waiting":
            self.waiting -= 1
        job.state = "cancelled"

    def _push(self, job: Job) -> None:
        job.state = "waiting"
        heapq.heappush(self._queues[job.next], (job.deadline, job.id, job))
        self.waiting += 1

    def _give_up(self, job: Job, start: float) -> str:
        """``job``'s next step cannot fit if started at ``start``: fall back to the head of the features it has
        ("head", the job now waits for it), else end with the exit it has ("done") or none ("failed")."""
        k = job.features
        if job.next.kind == FEATURES and k > job.exit and k >= job.min_exit:
            head = Step(HEAD, k)
            quantile = None if job.answered else self.hope_quantile
            if start + self._tail([head], quantile) <= job.deadline:
                job.next = head
                return "head"
        return "done" if job.answered else "failed"

    # -- decisions ------------------------------------------------------------------------------------------
    def plan(self, now: float) -> Plan:
        plan = Plan()
        self.profile.tick(now)
        fronts = {}
        for step, queue in self._queues.items():
            while queue:
                job = queue[0][2]
                if job.state != "waiting":  # cancelled while queued
                    heapq.heappop(queue)
                    continue
                if not self._fits(job, now):
                    heapq.heappop(queue)
                    self.waiting -= 1
                    self._settle_or_requeue(job, self._give_up(job, now), plan)
                    continue
                fronts[step] = job
                break
        if not fronts:
            return plan
        step = min(fronts, key=lambda s: (fronts[s].deadline, -self.key(s)))
        jobs = self._batch(step, now)
        if all(self._optional(step, j) for j in jobs):
            harmed = self._harmed(self.predict(step, len(jobs)), now)
            if harmed:
                step = self._mandatory_instead(fronts, harmed[0])
                jobs = self._batch(step, now)
        plan.step, plan.jobs = step, jobs
        for job in plan.jobs:
            self._queues[step].remove((job.deadline, job.id, job))
            job.state = "running"
        heapq.heapify(self._queues[step])
        self.waiting -= len(plan.jobs)
        self.running = len(plan.jobs)
        self.busy_until = now + self.expected(step, len(plan.jobs))
        self._stop_behind(now + self.predict(step, len(plan.jobs)), plan)
        return plan

    def _settle_or_requeue(self, job: Job, outcome: str, plan: Plan) -> None:
        if outcome == "head":
            self._push(job)
        else:
            job.state = outcome
            (plan.finished if outcome == "done" else plan.failed).append(job)

    def _stop_behind(self, free_at: float, plan: Plan) -> None:
        """Every waiting request that could start its next step only after this call, too late for its
        deadline, and has something to fall back on: a request with an exit is answered at once rather than when
        the call ends (or at its deadline), which is time its answer spends on the way back instead; one with
        features but no head for them moves to that head's queue now."""
        moved = []
        for step, queue in self._queues.items():
            left = len(moved)
            for job in [j for _, _, j in queue if j.state == "waiting" and not self._fits(j, free_at)]:
                outcome = self._give_up(job, free_at)
                if outcome == "failed":  # nothing to fall back on yet: it stays, plan() decides when it is due
                    continue
                job.state = "moving"
                self.waiting -= 1
                moved.append((job, outcome))
            if len(moved) > left:
                self._queues[step] = [e for e in queue if e[2].state == "waiting"]
                heapq.heapify(self._queues[step])
        for job, outcome in moved:
            self._settle_or_requeue(job, outcome, plan)

    def _batch(self, step: Step, now: float) -> list[Job]:
        """The requests waiting at ``step`` that one call should take (see the module docstring).

        The size is the one under which the most waiting requests reach their next useful exit in time when the
        queue is served in calls of that size, not only this call: one big call that fits its own requests can
        block every request behind it until their deadlines are gone (a batch costs nearly its size in time on a
        CPU). Among sizes that serve as many, the one that finishes them earliest on the whole.
        """
        ready = [j for _, _, j in sorted(self._queues[step]) if j.state == "waiting"][:self.lookahead]
        rests = {j.id: self._path(j)[1:] for j in ready}
        distinct = set(rests.values())  # a few paths are shared by many requests: cost each once per size
        best_size, best, best_tails = 1, None, {}
        for size in range(1, min(self.max_batch, len(ready)) + 1):
            per_rest = {rest: self._tail(rest, batch=size) for rest in distinct}
            tails = {i: per_rest[rest] for i, rest in rests.items()}
            count, total = self._served(step, ready, tails, size, now)
            if best is None or (-count, total) < best:  # most in time, then the earliest exits on the whole
                best_size, best, best_tails = size, (-count, total), tails
        done_at = now + self.predict(step, best_size)
        return [j for j in ready if done_at + best_tails[j.id] <= j.deadline][:best_size] or ready[:1]

    def _served(self, step: Step, ready: list[Job], tails: dict[int, float], size: int, now: float) -> tuple[int, float]:
        """Serving ``ready`` (in deadline order) in calls of ``size``, each taking the earliest deadlines that
        can still make it (``tails``: what each needs after this step, in a call of ``size`` too, which the same
        executor runs before the next call of this step): how many reach their next useful exit in time, and the
        sum of their finishing times.
        The sum is what separates sizes that serve as many: it is lower for small calls on a CPU (a batch costs
        about its size in time, and the first requests are answered sooner) and for large calls where batching
        pays."""
        t, count, total, rest = now, 0, 0.0, ready
        while rest:
            end = t + self.predict(step, min(size, len(rest)))
            fits = [j for j in rest if end + tails[j.id] <= j.deadline][:size]
            if not fits:
                break
            tail = max(tails[j.id] for j in fits) - self.margin  # the same executor runs what they need next
            count += len(fits)
            total += len(fits) * (end + tail - now)
            taken = {j.id for j in fits}
            rest = [j for j in rest if j.id not in taken]
            t = end + tail
        return count, total

    # -- what a request cannot do without, and what it may do in the slack ------------------------------------
    def _mandatory(self, job: Job) -> tuple[Step, ...]:
        """The steps ``job`` needs for an answer if it stops going deeper as soon as it may: none once it has one;
        the head of the features it has when it has features it may answer with (going deeper is optional);
        else the way to its first useful exit."""
        if job.answered:
            return ()
        if job.next.kind == HEAD:
            return (job.next,)
        if job.features >= job.min_exit:
            return (Step(HEAD, job.features),)
        return self._path(job)

    def _optional(self, step: Step, job: Job) -> bool:
        """Whether running ``step`` for ``job`` only deepens an answer it has or could have (its fallback): deeper
        features, and the head of a deeper exit once it has an answer. That head is the dearest step of the default
        model (5.5 ms against 2.5 ms for a pyramid network), and while it ran in its deadline's turn unchecked it
        delayed the answers of requests due after it that admission had counted on. In the simulator replaying
        real runs' traces (``benchmarks/stage_engine_sim.py``'s ``simulate``, ``optional_heads`` off and on; runs D,
        E, G at noise sigma 0.3, D and G at 0.6; 4 seeds each), treating it as depth cut the admitted requests left
        without an exit from 2.8-11.2% to 2.2-9.8% of all requests and met 0.5-2.7 points more, at every load."""
        if step.kind == HEAD:
            return self.optional_heads and job.answered
        return job.answered or job.features >= job.min_exit

    def _harmed(self, delay: float, now: float) -> list[Job]:
        """The waiting requests (in deadline order) whose mandatory work, served earliest deadline first from
        ``now``, ends in time but would not after ``delay`` seconds of other work (an optional step's: the requests
        that take it keep their mandatory work, a head either way).

        This is slack stealing from real-time scheduling of imprecise computations (Liu et al.): every admitted
        request's answer is mandatory, depth is optional and runs only in the slack the answers leave. The work
        before a request counts at its mean (the gateway's admission counts it so too), the request's own at the
        median: the quantile at which an admitted request without an answer is still tried (``_fits``); at the
        planning quantile, the noise of short steps on a busy CPU (p95 about twice the median here) would make
        nearly every waiting request look at risk and leave no depth. Requests that would miss either way do not
        veto anything.

        What the median leaves out is that the work before a request is a sum of calls, each of them noisy: on the
        real clock the last request of a long queue lost its answer whenever the calls before it ran slow together
        (``benchmarks/stage_engine_sim.py`` replays a real trace: about 10% of the requests at 80% load, admitted
        and then without an exit). So each request's slack also keeps ``protect_z`` standard deviations of the sum
        of its own calls and those before it, the calls' noise taken as independent (their variances add, where
        per-step quantiles would add up as if every call ran slow at once)."""
        order, need = self._answers()
        before, var, harmed = now, 0.0, []
        for job in order:
            n = need[job.id]
            slack = job.deadline - self._answer_end(before, var, n)
            if 0 <= slack < delay:
                harmed.append(job)
            before += n.work
            var += n.variance
        return harmed

    def _answers(self, new: Job | None = None) -> tuple[list[Job], dict[int, Need]]:
        """The waiting requests (and ``new``) that still need an answer, in deadline order, and what each needs
        (``Need``), its calls shared by as many requests as need the same step, up to a call's batch. Requests
        share a few paths (the way to exit k, the head of features k), so each path is costed once per call: this
        runs at every admission and every optional step, over every waiting request."""
        jobs = [j for q in self._queues.values() for _, _, j in q if j.state == "waiting"] + ([new] if new else [])
        steps_of = {j.id: self._mandatory(j) for j in jobs}
        counts = Counter(s for steps in steps_of.values() for s in steps)
        sizes = {s: min(n, self.max_batch) for s, n in counts.items()}
        costed: dict[tuple[Step, ...], Need] = {}
        need = {}
        for j in jobs:
            steps = steps_of[j.id]
            if not steps:
                continue
            n = costed.get(steps)
            if n is None:
                n = costed[steps] = self._need(steps, sizes)
            need[j.id] = n
        order = sorted((j for j in jobs if j.id in need), key=lambda j: (j.deadline, j.id))
        return order, need

    def _need(self, steps: tuple[Step, ...], sizes: dict[Step, int]) -> Need:
        """What ``steps`` cost one request in calls of ``sizes[step]`` requests: for the requests after it, its share
        of each call's mean (stage batching shares a call's time) and that share's variance; for its own answer,
        each call alone at the median (``_batch`` shares a call only when its earliest deadline fits) and their
        variance."""
        return Need(sum(self.expected(s, sizes[s]) / sizes[s] for s in steps), self._variance(steps, sizes),
                    sum(self.predict(s, 1, self.hope_quantile) for s in steps), self._variance(steps))

    def _answer_end(self, before: float, variance: float, need: Need) -> float:
        """When a request's answer (its mandatory steps) ends if they start at ``before``, after work of this
        ``variance``: its own calls at the median, alone, the safety for the noise of all of them, and the margin
        (the test of ``_room_for`` and of ``_harmed``)."""
        return before + need.own + self._safety(variance + need.own_variance) + self.margin

    def _variance(self, steps: tuple[Step, ...], sizes: dict[Step, int] | None = None) -> float:
        """Variance (s^2) of a request's share of ``steps`` in calls of ``sizes[step]`` requests (alone: 1), its
        calls' noise taken as independent of each other's."""
        if not self.protect_z:
            return 0.0
        total = 0.0
        for s in steps:
            n = sizes[s] if sizes else 1
            total += (self.spread(s, n) / n) ** 2
        return total

    def _safety(self, variance: float) -> float:
        """Seconds a sum of calls of this variance needs beyond its estimate to end in time ``protect_z`` standard
        deviations out."""
        return self.protect_z * variance ** 0.5 if variance > 0 else 0.0

    def _mandatory_instead(self, fronts: dict[Step, Job], harmed: Job) -> Step:
        """What runs instead of an optional step that would make ``harmed`` miss its answer: the earliest-deadline
        mandatory work, earliest deadline first. That is a step at the front of its queue that some request cannot
        do without, or the head of a request without an answer that waits at an optional step (going deeper): its
        mandatory work is the head of the features it has, which it falls back to now. Without the second, such a
        request stayed parked at its optional step while the mandatory steps of requests due after it ran in its
        place, until neither its next stage nor its head fitted (``benchmarks/stage_engine_sim.py`` replaying the
        real trace at 80 / 120% load: admitted requests without an exit 8.0 / 9.0% of all before, 6.8 / 5.8% after).
        When nothing else waits, ``harmed`` itself falls back to its head."""
        key = lambda s: (fronts[s].deadline, -self.key(s))  # noqa: E731
        mandatory = [s for s, j in fronts.items() if not self._optional(s, j)]
        parked = [s for s, j in fronts.items() if self._optional(s, j) and not j.answered]
        first = min(mandatory, key=key, default=None)
        first_parked = min(parked, key=key, default=None)
        if first_parked is not None and (first is None or key(first_parked) < key(first)):
            harmed = fronts[first_parked]
        elif first is not None:
            return first
        head = Step(HEAD, harmed.features)
        queue = self._queues[harmed.next]
        queue.remove((harmed.deadline, harmed.id, harmed))
        heapq.heapify(queue)
        self.waiting -= 1
        harmed.next = head
        self._push(harmed)
        return head

    def ran(self, step: Step, jobs: list[Job], seconds: float, now: float) -> list[Job]:
        """A call of ``step`` on ``jobs`` finished after ``seconds``: learn its latency, move each job on.

        Returns the jobs that this call ended (only a head ends any): those done with the exit just computed
        (their last allowed one, or their next stage cannot fit), so the executor can mark that exit's response as
        the last."""
        self.observe(step, len(jobs), seconds, now)
        self.step_runs[step] += 1
        self.running = 0
        ended = []
        for job in jobs:
            if job.state != "running":  # cancelled during the call
                continue
            if step.kind == FEATURES:
                job.features = step.level
                job.next = self._after_features(job, now)
            else:
                job.exit = step.level
                job.next = self._after_head(job, now)
            if job.next is None:
                job.state = "done" if job.answered else "failed"
                ended.append(job)
            else:
                self._push(job)
        return ended

    def _deeper_fits(self, job: Job, now: float, quantile: float | None = None) -> bool:
        """Whether the next stage's features and head, started now, end by the deadline."""
        k = job.features + 1
        return k <= job.max_exit and now + self._tail([Step(FEATURES, k), Step(HEAD, k)], quantile) <= job.deadline

    def _after_features(self, job: Job, now: float) -> Step | None:
        k = job.features
        if k < job.min_exit:  # an exit below min_exit is of no use: straight on (plan() gives up if it cannot fit)
            return Step(FEATURES, k + 1)
        if job.every_exit or not self._deeper_fits(job, now):
            return Step(HEAD, k)
        if not job.answered and not (self._deeper_fits(job, now + self._ahead(job))
                                     and self._deeper_fits(job, now, self.insure_quantile)):
            return Step(HEAD, k)  # insurance: a slow next stage, or one that other requests delay, would leave none
        return Step(FEATURES, k + 1)

    def _ahead(self, job: Job) -> float:
        """Seconds of waiting work that earliest-deadline-first puts before ``job``'s next step: the next step of
        every waiting request with an earlier deadline, one call each (an upper bound where they would share)."""
        return sum(self.predict(step) for step, queue in self._queues.items()
                   for deadline, _, j in queue if j.state == "waiting" and deadline < job.deadline)

    def _after_head(self, job: Job, now: float) -> Step | None:
        return Step(FEATURES, job.features + 1) if self._deeper_fits(job, now) else None

    def failed(self, jobs: list[Job]) -> None:
        """A call failed: its jobs cannot go on."""
        self.running = 0
        for job in jobs:
            if job.state == "running":
                job.state = "failed"
