"""The progressive stage engine on a simulated clock: stopping at the deadline, EDF across stages with first exits
protected, batches sized by deadlines, cancellation."""

from anytime.serving.latency import LatencyProfile
from anytime.serving.progressive import Job, StageEngine

MS = 1e-3
# stage k at batch b takes STAGE_MS[k] * (1 + 0.25 (b - 1)) ms: batching 4 costs 1.75x one
STAGE_MS = {1: 10.0, 2: 4.0, 3: 4.0}


def engine(max_batch=4, margin_ms=0.0):
    prior = {k: {b: {"p50": v * (1 + 0.25 * (b - 1)), "p95": v * (1 + 0.25 * (b - 1))} for b in (1, 2, 4)}
             for k, v in STAGE_MS.items()}
    return StageEngine(LatencyProfile(prior, cumulative=False), num_stages=3, max_batch=max_batch, margin_s=margin_ms * MS)


def job(deadline_ms, now=0.0, max_exit=3, min_exit=1):
    return Job(deadline=now + deadline_ms * MS, arrival=now, max_exit=max_exit, min_exit=min_exit)


def run_to_end(e: StageEngine, now: float = 0.0, limit: int = 100):
    """Drive the engine like the executor does, each call taking exactly its predicted time; returns the
    (stage, [job ids]) calls in order, the final time, and what finished or failed."""
    calls, finished, failed = [], [], []
    for _ in range(limit):
        plan = e.plan(now)
        finished += plan.finished
        failed += plan.failed
        if plan.stage is None:
            return calls, now, finished, failed
        calls.append((plan.stage, [j.id for j in plan.jobs]))
        now += e.profile.base(plan.stage, len(plan.jobs))
        finished += e.ran(plan.stage, plan.jobs, e.profile.base(plan.stage, len(plan.jobs)), now)
    raise AssertionError("the engine did not settle")


def test_a_request_goes_as_deep_as_its_deadline_allows_and_stops_there():
    for budget_ms, deepest in [(100, 3), (16, 2), (12, 1)]:
        e = engine()
        j = job(budget_ms)
        assert e.add(j, 0.0)
        calls, _, finished, failed = run_to_end(e)
        assert [c[0] for c in calls] == list(range(1, deepest + 1)) and failed == []
        assert finished == [j] and j.exit == deepest and j.state == "done"


def test_a_budget_below_the_first_stage_fails_at_once():
    e = engine()
    j = job(5)
    assert not e.add(j, 0.0) and j.state == "failed" and e.waiting == 0


def test_requests_at_one_stage_are_batched_within_the_earliest_deadline():
    e = engine()
    jobs = [job(d) for d in (40, 45, 50, 60, 70)]
    for j in jobs:
        e.add(j, 0.0)
    plan = e.plan(0.0)
    assert plan.stage == 1 and [j.id for j in plan.jobs] == [j.id for j in jobs[:4]]  # max_batch 4
    e2 = engine()
    tight = [job(13), job(60), job(60)]  # batch 2 takes 12.5 ms, batch 3 15 ms: only 2 fit the 13 ms deadline
    for j in tight:
        e2.add(j, 0.0)
    assert len(e2.plan(0.0).jobs) == 2


def test_a_deeper_stage_yields_when_it_would_make_a_first_exit_late():
    e = engine(max_batch=1)
    old = job(22)
    e.add(old, 0.0)
    e.ran(1, e.plan(0.0).jobs, 0.010, 0.010)  # old has exit 1 at t=10 ms and waits for stage 2 (4 ms)
    new = job(13, now=0.010)  # deadline 23 ms: its stage 1 (10 ms) must start within 3 ms
    e.add(new, 0.010)
    plan = e.plan(0.010)  # EDF alone would run old's stage 2 first (deadline 22 < 23), and new would miss
    assert plan.stage == 1 and plan.jobs == [new]
    e3 = engine(max_batch=1)
    old = job(30)
    e3.add(old, 0.0)
    e3.ran(1, e3.plan(0.0).jobs, 0.010, 0.010)
    relaxed = job(40, now=0.010)  # plenty of time for both: earliest deadline first
    e3.add(relaxed, 0.010)
    assert e3.plan(0.010).jobs == [old]


def test_min_exit_is_planned_as_a_whole_and_max_exit_ends_the_request():
    e = engine()
    capped = job(1000, max_exit=2)
    e.add(capped, 0.0)
    calls, _, finished, _ = run_to_end(e)
    assert [c[0] for c in calls] == [1, 2] and capped.exit == 2 and finished == [capped]
    e = engine()
    assert not e.add(job(16, min_exit=3), 0.0)  # stages 1-3 need 18 ms
    e = engine()
    assert e.add(job(19, min_exit=3), 0.0)


def test_cancelled_requests_leave_their_queue():
    e = engine()
    a, b = job(100), job(100)
    e.add(a, 0.0)
    e.add(b, 0.0)
    e.cancel(a)
    plan = e.plan(0.0)
    assert plan.jobs == [b] and e.waiting == 0
    e.ran(1, plan.jobs, 0.01, 0.01)
    e.cancel(b)
    assert e.plan(0.01).stage is None and e.waiting == 0


def serve_arrivals(max_batch: int, arrivals_ms: list[float], budget_ms: float):
    """Requests arrive over time; each call takes exactly its predicted time. Returns the jobs and, per job, when
    its first exit was ready (None: never)."""
    e = engine(max_batch=max_batch)
    jobs = [job(budget_ms, now=t * MS) for t in arrivals_ms]
    first = {}
    now, pending = 0.0, list(jobs)
    while True:
        while pending and pending[0].arrival <= now + 1e-12:
            e.add(pending.pop(0), now)
        plan = e.plan(now)
        if plan.stage is None:
            if not pending:
                return jobs, first
            now = pending[0].arrival
            continue
        now += e.profile.base(plan.stage, len(plan.jobs))
        if plan.stage == 1:
            first.update({j.id: now for j in plan.jobs})
        e.ran(plan.stage, plan.jobs, e.profile.base(plan.stage, len(plan.jobs)), now)


def test_under_overload_stage_batching_answers_more_and_never_late():
    """40 requests in 100 ms with 25 ms budgets, stage 1 taking 10 ms (4 at once: 17.5 ms): four times what one
    at a time can serve. Every first exit computed is in time, and batches of 4 answer far more requests."""
    arrivals = [i * 2.5 for i in range(40)]
    answered = {}
    for max_batch in (1, 4):
        jobs, first = serve_arrivals(max_batch, arrivals, 25)
        assert all(first[j.id] <= j.deadline + 1e-9 for j in jobs if j.id in first)
        answered[max_batch] = len(first)
    assert answered[1] <= 12 and answered[4] >= 1.5 * answered[1], answered


def test_where_a_batch_costs_its_size_in_time_one_big_call_does_not_block_the_queue():
    """On a CPU a batch of b costs about b single calls: serving 8 waiting requests in one call answers none of
    them before the whole call ends. The engine serves them one by one instead (as many in time, sooner)."""
    prior = {1: {b: {"p50": 10.0 * b, "p95": 10.0 * b} for b in (1, 2, 4, 8)}, 2: {1: {"p50": 4.0, "p95": 4.0}}}
    e = StageEngine(LatencyProfile(prior, cumulative=False), num_stages=2, max_batch=8)
    for _ in range(8):
        e.add(job(200), 0.0)
    assert len(e.plan(0.0).jobs) == 1


def test_a_request_whose_next_stage_cannot_fit_is_answered_at_once():
    e = engine()
    j = job(13)  # stage 1 (10 ms) fits; stage 2 (4 ms) no longer fits after it
    e.add(j, 0.0)
    plan = e.plan(0.0)
    assert e.ran(1, plan.jobs, 0.010, 0.010) == [j] and j.state == "done" and e.waiting == 0
    # one that could go on, but only after a call starting now: answered when that call is planned, not after it
    e = engine(max_batch=1)
    old = job(22)
    e.add(old, 0.0)
    e.ran(1, e.plan(0.0).jobs, 0.010, 0.010)  # old: exit 1 at 10 ms; its stage 2 (4 ms) must start by 18 ms
    new = job(13, now=0.010)  # its first stage must start now, and takes until 20 ms
    e.add(new, 0.010)
    plan = e.plan(0.010)
    assert plan.jobs == [new] and plan.finished == [old] and old.exit == 1 and old.state == "done"
