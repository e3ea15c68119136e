"""Progressive execution: every request runs stage by stage, the next stage only if it still fits the deadline,
and requests waiting at the same stage share one call (iteration-level batching, as in Orca for LLM serving).

Pure logic on an injected clock, like the upfront scheduler: the Triton model that runs the stages
(``anytime.export.triton_progressive_model``) asks it what to run next, and tests drive it with a simulated clock.

Decisions, each time the executor is free (``plan``):

- **Stopping.** Before a request's next stage, its predicted completion (the stage's latency at the planning
  quantile, for the batch it would join) must fit the request's deadline; if it does not, the request stops with
  the exit it has. A request with no exit yet whose first stage cannot fit has failed. So a request is answered
  at its deadline with the deepest exit that could be computed in time, and a wrong guess costs one stage, not
  the whole answer.
- **Order.** Earliest deadline first across stages. A request's next stage yields to other requests' *first*
  stages when running it first would make one of them miss its first exit: a first exit is the difference
  between an answer and none, a deeper one only a better answer.
- **Batching.** At the chosen stage, the call takes the batch size under which the most waiting requests finish
  the stage in time when the queue is served in calls of that size (a larger batch takes longer, so it can
  block the requests behind it past their deadlines; among sizes that serve as many, the one with the earliest
  exits on the whole, which on a CPU is the smaller one), and among the
  requests that fit that size, the earliest deadlines. Under overload this serves the requests that can still
  make it rather than the ones about to expire.
- **Stopping early.** A request that has a useful exit and could start its next stage only too late (after the
  call being started, or right now) is answered at once rather than at its deadline.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

from anytime.serving.latency import LatencyProfile

_seq = itertools.count()


@dataclass(eq=False)
class Job:
    """One request inside the engine."""

    deadline: float  # on the engine's clock (seconds)
    arrival: float
    max_exit: int
    min_exit: int = 1
    payload: Any = None  # the executor's: the request's sender, and the features its last stage produced
    stage: int = 1  # the next stage to run
    exit: int = 0  # deepest exit computed so far (0: none)
    state: str = "waiting"  # waiting -> running -> waiting ... -> done | failed | cancelled
    id: int = field(default_factory=lambda: next(_seq))


@dataclass
class Plan:
    """What to do now: run ``stage`` on ``jobs`` (if any), and settle ``finished`` (stopped with their exit) and
    ``failed`` (no exit could be computed in time)."""

    stage: int | None = None
    jobs: list[Job] = field(default_factory=list)
    finished: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)


class StageEngine:
    def __init__(self, profile: LatencyProfile, num_stages: int, max_batch: int = 8, margin_s: float = 0.001):
        self.profile = profile  # "exit" k of the profile is stage k (cumulative=False); batch sizes as measured
        self.num_stages = num_stages
        self.max_batch = max(1, int(max_batch))
        self.lookahead = 4 * self.max_batch  # requests a batch-size decision looks at (bounds its cost)
        self.margin = margin_s  # what a stage's answer needs after the stage: sending it, the gateway's reply
        self._queues: dict[int, list[tuple[float, int, Job]]] = {s: [] for s in range(1, num_stages + 1)}
        self.waiting = 0
        self.stage_runs = {s: 0 for s in range(1, num_stages + 1)}

    # -- the latency model ---------------------------------------------------------------------------------
    def predict(self, stage: int, batch: int = 1) -> float:
        return self.profile.predict(stage, batch) + self.margin

    def observe(self, stage: int, batch: int, seconds: float, now: float) -> None:
        self.profile.observe(stage, seconds, now, batch=batch)

    # -- requests -------------------------------------------------------------------------------------------
    def add(self, job: Job, now: float) -> bool:
        """Queue a new request at its first stage; False (and the job failed) when even that cannot fit."""
        self.profile.tick(now)
        job.max_exit = min(job.max_exit, self.num_stages)
        if job.min_exit > job.max_exit or now + self._time_to(job, 1) > job.deadline:
            job.state = "failed"
            return False
        self._push(job)
        return True

    def cancel(self, job: Job) -> None:
        """The client went away: drop the request wherever it is (lazily, when its queue reaches it)."""
        if job.state == "waiting":
            self.waiting -= 1
        job.state = "cancelled"

    def _push(self, job: Job) -> None:
        job.state = "waiting"
        heapq.heappush(self._queues[job.stage], (job.deadline, job.id, job))
        self.waiting += 1

    def _time_to(self, job: Job, batch: int) -> float:
        """Seconds until ``job`` has its next useful exit: its next stage, or every stage up to ``min_exit``."""
        last = max(job.stage, job.min_exit)
        return sum(self.predict(s, batch) for s in range(job.stage, last + 1))

    # -- decisions ------------------------------------------------------------------------------------------
    def plan(self, now: float) -> Plan:
        plan = Plan()
        self.profile.tick(now)
        heads = {}
        for stage, queue in self._queues.items():
            while queue:
                job = queue[0][2]
                if job.state != "waiting":  # cancelled while queued
                    heapq.heappop(queue)
                    continue
                if job.stage > job.max_exit or now + self._time_to(job, 1) > job.deadline:
                    heapq.heappop(queue)
                    self.waiting -= 1
                    job.state = "done" if job.exit >= job.min_exit else "failed"
                    (plan.finished if job.state == "done" else plan.failed).append(job)
                    continue
                heads[stage] = job
                break
        if not heads:
            return plan
        stage = min(heads, key=lambda s: (heads[s].deadline, -s))
        jobs = self._batch(stage, now)
        if stage != 1 and 1 in heads and not self._first_exits_survive(now + self.predict(stage, len(jobs)), now):
            stage, jobs = 1, self._batch(1, now)
        plan.stage, plan.jobs = stage, jobs
        for job in plan.jobs:
            self._queues[stage].remove((job.deadline, job.id, job))
            job.state = "running"
        heapq.heapify(self._queues[stage])
        self.waiting -= len(plan.jobs)
        self._stop_behind(now + self.predict(stage, len(plan.jobs)), plan)
        return plan

    def _stop_behind(self, free_at: float, plan: Plan) -> None:
        """Stop now every waiting request that has a useful exit but could start its next stage only after this
        call, too late for its deadline: it is answered at once rather than when the call ends (or at its
        deadline), which is time its answer spends on the way back instead."""
        for stage, queue in self._queues.items():
            stopped = [j for _, _, j in queue if j.state == "waiting" and j.exit >= j.min_exit
                       and free_at + self._time_to(j, 1) > j.deadline]
            if not stopped:
                continue
            for job in stopped:
                job.state = "done"
                plan.finished.append(job)
            self._queues[stage] = [e for e in queue if e[2].state == "waiting"]
            heapq.heapify(self._queues[stage])
            self.waiting -= len(stopped)

    def _batch(self, stage: int, now: float) -> list[Job]:
        """The requests waiting at ``stage`` that one call should take (see the module docstring).

        The size is the one under which the most waiting requests finish the stage in time when the queue is
        served in calls of that size, not only this call: one big call that fits its own requests can block
        every request behind it until their deadlines are gone (a batch costs nearly its size in time on a
        CPU). Among sizes that serve as many, the one that finishes them earliest on the whole.
        """
        ready = [j for _, _, j in sorted(self._queues[stage]) if j.state == "waiting"][:self.lookahead]
        best_size, best = 1, None
        for size in range(1, min(self.max_batch, len(ready)) + 1):
            count, total = self._served(stage, ready, size, now)
            if best is None or (-count, total) < best:  # most in time, then the earliest exits on the whole
                best_size, best = size, (-count, total)
        done_at = now + self.predict(stage, best_size)
        return [j for j in ready if done_at <= j.deadline][:best_size] or ready[:1]

    def _served(self, stage: int, ready: list[Job], size: int, now: float) -> tuple[int, float]:
        """Serving ``ready`` (in deadline order) in calls of ``size``, each taking the earliest deadlines that
        can still make it: how many finish ``stage`` in time, and the sum of their finishing times. The sum is
        what separates sizes that serve as many: it is lower for small calls on a CPU (a batch costs about its
        size in time, and the first requests are answered sooner) and for large calls where batching pays."""
        t, count, total, rest = now, 0, 0.0, ready
        while rest:
            end = t + self.predict(stage, min(size, len(rest)))
            fits = [j for j in rest if end <= j.deadline][:size]
            if not fits:
                break
            count += len(fits)
            total += len(fits) * (end - now)
            taken = {j.id for j in fits}
            rest = [j for j in rest if j.id not in taken]
            t = end
        return count, total

    def _first_exits_survive(self, start: float, now: float) -> bool:
        """Whether every request still waiting for its first exit gets it in time if stage 1 starts at ``start``
        (in deadline order, in full batches); requests that could not make it anyway do not count."""
        first = [j for _, _, j in sorted(self._queues[1]) if j.state == "waiting"]
        t = start
        for i in range(0, len(first), self.max_batch):
            chunk = first[i:i + self.max_batch]
            t += self.predict(1, len(chunk))
            for job in chunk:
                if t > job.deadline and now + self.predict(1, 1) <= job.deadline:
                    return False
        return True

    def ran(self, stage: int, jobs: list[Job], seconds: float, now: float) -> list[Job]:
        """A call of ``stage`` on ``jobs`` finished after ``seconds``: learn its latency, move each job on.
        Returns the jobs that are done: they reached their last allowed exit, or their next stage cannot fit any
        more (so the exit just computed is their answer, and its response can say so)."""
        self.observe(stage, len(jobs), seconds, now)
        self.stage_runs[stage] += 1
        done = []
        for job in jobs:
            if job.state != "running":  # cancelled during the call
                continue
            job.exit, job.stage = stage, stage + 1
            # done at its last allowed exit, or when even starting the next stage now would miss the deadline:
            # then this exit's response is the final one and the answer leaves now, not at the deadline
            if job.stage > job.max_exit or (job.exit >= job.min_exit and now + self._time_to(job, 1) > job.deadline):
                job.state = "done"
                done.append(job)
            else:
                self._push(job)
        return done

    def failed(self, jobs: list[Job]) -> None:
        """A call failed: its jobs cannot go on."""
        for job in jobs:
            if job.state == "running":
                job.state = "failed"
