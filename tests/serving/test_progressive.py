"""The progressive stage engine on a simulated clock: lazy heads (only the answer's, unless every exit is
wanted), insurance when the slack is small, stopping at the deadline, EDF across steps with first exits
protected, batches sized by deadlines, cancellation."""

from anytime.serving.latency import LatencyProfile
from anytime.serving.progressive import FEATURES, HEAD, Job, StageEngine, Step

MS = 1e-3
# stage k's features and exit k's head at batch b take MS * (1 + 0.25 (b - 1)): batching 4 costs 1.75x one.
# Lazy: exit 1 takes 10 ms, exit 2 14 ms, exit 3 18 ms; every exit on the way: 10, 18, 26 ms.
FEATURES_MS = {1: 6.0, 2: 4.0, 3: 4.0}
HEAD_MS = {1: 4.0, 2: 4.0, 3: 4.0}


def f(k):
    return Step(FEATURES, k)


def h(k):
    return Step(HEAD, k)


def prior_of(features_ms, head_ms, stats=lambda ms: {"p50": ms, "p95": ms}, batches=(1, 2, 4)):
    """The profile's prior: features k under key k, head k under num_stages + k."""
    n = len(features_ms)
    per_key = {**features_ms, **{n + k: v for k, v in head_ms.items()}}
    return {key: {b: stats(ms * (1 + 0.25 * (b - 1))) for b in batches} for key, ms in per_key.items()}


def engine(max_batch=4, margin_ms=0.0, stats=None, **kwargs):
    prior = prior_of(FEATURES_MS, HEAD_MS, **({"stats": stats} if stats else {}))
    return StageEngine(LatencyProfile(prior, cumulative=False), num_stages=3, max_batch=max_batch,
                       margin_s=margin_ms * MS, **kwargs)


def job(deadline_ms, now=0.0, max_exit=3, min_exit=1, every_exit=False):
    return Job(deadline=now + deadline_ms * MS, arrival=now, max_exit=max_exit, min_exit=min_exit,
               every_exit=every_exit)


def duration(e: StageEngine, step: Step, batch: int) -> float:
    """What a call takes in these simulations: its median."""
    return e.predict(step, batch, 0.5)


def run_to_end(e: StageEngine, now: float = 0.0, limit: int = 100):
    """Drive the engine like the executor does, each call taking its median time; returns the (step, [job ids])
    calls in order, the final time, and what finished or failed."""
    calls, finished, failed = [], [], []
    for _ in range(limit):
        plan = e.plan(now)
        finished += plan.finished
        failed += plan.failed
        if plan.step is None:
            return calls, now, finished, failed
        calls.append((plan.step, [j.id for j in plan.jobs]))
        now += duration(e, plan.step, len(plan.jobs))
        for j in e.ran(plan.step, plan.jobs, duration(e, plan.step, len(plan.jobs)), now):
            (finished if j.state == "done" else failed).append(j)
    raise AssertionError("the engine did not settle")


def test_a_request_goes_as_deep_as_its_deadline_allows_and_runs_only_its_answers_head():
    for budget_ms, steps in [(100, [f(1), f(2), f(3), h(3)]), (16, [f(1), f(2), h(2)]), (12, [f(1), h(1)])]:
        e = engine()
        j = job(budget_ms)
        assert e.add(j, 0.0)
        calls, end, finished, failed = run_to_end(e)
        assert [c[0] for c in calls] == steps and failed == []
        assert finished == [j] and j.exit == steps[-1].level and j.state == "done" and end <= j.deadline


def test_a_stream_runs_every_head_on_the_way():
    e = engine()
    j = job(100, every_exit=True)
    e.add(j, 0.0)
    calls, _, finished, _ = run_to_end(e)
    assert [c[0] for c in calls] == [f(1), h(1), f(2), h(2), f(3), h(3)] and finished == [j] and j.exit == 3


def test_with_no_answer_yet_and_little_slack_the_head_runs_first_as_insurance():
    """Calls usually take their median, 3 in 100 twice that: going on fits at the planning quantile (p95) but
    not if the call is slow (p99). Without an answer, the request takes the exit it has first."""
    def rare_slow(ms):
        return {"samples_ms": [ms] * 97 + [2 * ms] * 3}
    e = engine(stats=rare_slow)
    # After f1 (6 ms): f2 + h2 end at 14 ms (p95) or by 22 ms (p99, which the observations of median calls lower a
    # little); after f2 (10 ms), f3 + h3 at 18 or 24 ms: too late for a request with no answer.
    j = job(23)
    e.add(j, 0.0)
    calls, end, finished, _ = run_to_end(e)
    assert [c[0] for c in calls] == [f(1), f(2), h(2), f(3), h(3)] and finished == [j] and j.exit == 3
    e = engine()  # the same budget without the slow tail: straight to exit 3
    j = job(23)
    e.add(j, 0.0)
    assert [c[0] for c in run_to_end(e)[0]] == [f(1), f(2), f(3), h(3)]


def spread(ms):
    return {"samples_ms": [ms * r for r in (0.6, 0.8, 1.0, 1.2, 1.4)]}


def test_a_new_request_is_admitted_while_its_median_fits_unless_it_is_alone():
    def busy():  # another request waits: a long shot would cost it
        e = engine(stats=spread, protect_z=0)  # the median alone (the safety: the next test)
        e.add(job(100), 0.0)
        return e
    e = busy()
    assert e.predict(f(1)) + e.predict(h(1)) > 10.5 * MS  # the planning quantile says exit 1 needs more ...
    assert e.add(job(10.5), 0.0)  # ... but the median fits: the request gets its chance
    long_shot = job(8)
    assert not busy().add(long_shot, 0.0) and long_shot.state == "refused"
    assert engine(stats=spread).add(job(8), 0.0)  # alone: tried while the fastest plausible time (6 ms) fits
    too_small = job(5.5)
    assert not engine(stats=spread).add(too_small, 0.0) and too_small.state == "failed"


def test_admission_keeps_a_safety_for_the_noise_of_the_work_before_an_answer():
    """Exit 1 is 10 ms at the median, with a standard deviation of 2.0 ms (its 6 and 4 ms calls each spread by
    28%): the default keeps 1.64 of them. Work due before adds its variance, not its quantiles."""
    e = engine(max_batch=1, stats=spread)  # one call per request: the work before is whole requests' work
    e.add(job(100), 0.0)
    assert not e.add(job(12), 0.0)  # 10 + 1.64 x 2.0 = 13.4 ms > 12
    assert e.add(job(14), 0.0)
    behind = job(27)  # 10 ms due before it and its own 10: 20 ms, sd 2.9 ms: 24.7 ms fits
    assert e.add(behind, 0.0)
    assert not e.add(job(24), 0.0)  # after the 14 ms one, the same 20 ms and sd 2.9 ms: 24.7 ms > 24


def test_an_admitted_request_is_tried_while_its_median_fits():
    e = engine(stats=spread)
    j = job(14)
    assert e.add(j, 0.0) and e.add(job(100), 0.0)
    # f1 ran slow (9 ms, not 6): the head's planning quantile (5.5 ms) no longer fits, its median (4 ms) does
    e.ran(e.plan(0.0).step, [j], 0.009, 0.009)
    assert 0.009 + e.predict(h(1)) > j.deadline
    plan = e.plan(0.009)
    assert plan.step == h(1) and plan.jobs == [j] and not plan.failed


def test_admission_counts_the_answers_due_before_and_spares_those_due_after():
    e = engine(max_batch=1)
    assert e.add(job(30), 0.0)  # alone
    due_first = job(15)  # exit 1 (10 ms) before the first request's: both in time
    assert e.add(due_first, 0.0)
    behind = job(18)  # 10 ms due before it, and its own 10 ms: 20 > 18
    assert not e.add(behind, 0.0) and behind.state == "refused"
    cutting_in = job(12)  # fits alone, but pushes due_first's answer to 20 ms > 15
    assert not e.add(cutting_in, 0.0) and cutting_in.state == "refused"
    calls, _, finished, failed = run_to_end(e)
    assert len(finished) == 2 and not failed


def test_depth_runs_in_the_slack_that_answers_leave():
    """A request that could answer (it has stage 1's features) goes deeper only while every waiting request's answer
    stays in time; otherwise an answer runs first."""
    e = engine(max_batch=1)
    deep = job(30)
    e.add(deep, 0.0)
    e.ran(e.plan(0.0).step, [deep], 0.006, 0.006)
    assert deep.next == f(2) and not deep.answered  # it will answer with a deeper head
    n1, n2 = job(25, now=0.006), job(26, now=0.006)  # due at 31 and 32 ms, each needing f1 + h1 (10 ms)
    assert e.add(n1, 0.006) and e.add(n2, 0.006)  # deep's head (4 ms), n1, n2: in time, n2 with 2 ms to spare
    # EDF alone would run deep's f2 (4 ms) and leave n2 late; instead the earliest-due answer runs: deep's, which
    # is due before n1's and n2's (an answer put off for requests due later is how admitted requests lost theirs)
    plan = e.plan(0.006)
    assert plan.step == h(1) and plan.jobs == [deep]
    e.ran(plan.step, plan.jobs, 0.004, 0.010)
    calls, _, finished, failed = run_to_end(e, 0.010)
    assert not failed and {j.id for j in finished} >= {n1.id, n2.id, deep.id}
    assert deep.exit == 1  # no depth for deep: it would cost n2 its answer


def test_when_depth_would_cost_an_answer_the_earliest_due_request_falls_back_to_its_head():
    e = engine(max_batch=1)
    b, a = job(38 - 29, now=0.029), job(40 - 29, now=0.029)  # due at 38 and 40 ms
    for j in (b, a):  # both have stage 1's features and wait to go deeper (a state set directly)
        j.features, j.next = 1, f(2)
        e._push(j)
    # b's f2 + h2 (8 ms) fit its deadline, but after them a's head (4 ms) would end at 41 ms: b's answer is due first
    plan = e.plan(0.029)
    assert plan.step == h(1) and plan.jobs == [b]
    e.ran(plan.step, plan.jobs, 0.004, 0.033)
    calls, _, finished, failed = run_to_end(e, 0.033)
    assert not failed and a.exit == 1 and b.exit == 1  # a then falls back too: its f2 + h2 no longer fit

def test_a_budget_below_the_first_exit_fails_at_once():
    e = engine()
    j = job(9)  # f1 + h1: 10 ms
    assert not e.add(j, 0.0) and j.state == "failed" and e.waiting == 0


def test_requests_at_one_step_are_batched_within_the_earliest_deadline():
    e = engine()
    jobs = [job(d) for d in (40, 45, 50, 60, 70)]
    for j in jobs:
        e.add(j, 0.0)
    plan = e.plan(0.0)
    assert plan.step == f(1) and [j.id for j in plan.jobs] == [j.id for j in jobs[:4]]  # max_batch 4
    e2 = engine()
    tight = [job(13), job(60), job(60)]  # f1 + h1 at batch 2 end at 12.5 ms, at batch 3 at 15
    for j in tight:
        e2.add(j, 0.0)
    assert len(e2.plan(0.0).jobs) == 2


def test_a_step_of_answered_requests_yields_when_it_would_make_a_first_exit_late():
    e = engine(max_batch=1)
    old = job(23, every_exit=True)
    e.add(old, 0.0)
    run = e.plan(0.0)
    e.ran(run.step, run.jobs, 0.006, 0.006)
    run = e.plan(0.006)
    assert run.step == h(1)
    e.ran(run.step, run.jobs, 0.004, 0.010)  # old has exit 1 at 10 ms and waits for f2 (4 ms)
    new = job(13, now=0.010)  # deadline 23 ms: its f1 + h1 (10 ms) must start within 3 ms
    e.add(new, 0.010)
    plan = e.plan(0.010)  # EDF alone would run old's f2 first (the deeper step on a tie), and new would miss
    assert plan.step == f(1) and plan.jobs == [new]
    e3 = engine(max_batch=1)
    old = job(23, every_exit=True)
    e3.add(old, 0.0)
    for t in (0.006, 0.010):
        run = e3.plan(t - (0.006 if t == 0.006 else 0.004))
        e3.ran(run.step, run.jobs, 0.0, t)
    relaxed = job(40, now=0.010)  # plenty of time for both: earliest deadline first
    e3.add(relaxed, 0.010)
    assert e3.plan(0.010).jobs == [old]


def test_a_deeper_head_of_an_answered_request_yields_when_it_would_make_a_first_exit_late():
    """The head of an exit deeper than the answer a request has is depth too: it runs only in the slack."""
    def scene(**kwargs):
        e = engine(max_batch=1, **kwargs)
        old = job(11)  # due first, at 11 ms
        old.features, old.exit, old.next = 2, 1, h(2)  # exit 1 in hand, stage 2's features done: head 2 next
        e._push(old)
        new = job(12)  # due at 12 ms; its f1 + h1 take 10: 2 ms to spare, less than old's head 2 (4 ms)
        assert e.add(new, 0.0)
        return e, old, new

    e, old, new = scene()
    plan = e.plan(0.0)
    assert plan.step == f(1) and plan.jobs == [new]
    e.ran(plan.step, plan.jobs, 0.006, 0.006)
    calls, _, finished, failed = run_to_end(e, 0.006)
    assert not failed and new.exit == 1 and old.exit == 1  # old keeps the answer it had; new gets one
    e, old, new = scene(optional_heads=False)  # as before: the deeper head ran in its deadline's turn, unchecked,
    plan = e.plan(0.0)
    assert plan.step == h(2) and plan.jobs == [old]  # and new's first exit could only end at 14 ms


def test_min_exit_is_planned_as_a_whole_and_max_exit_ends_the_request():
    e = engine()
    capped = job(1000, max_exit=2)
    e.add(capped, 0.0)
    calls, _, finished, _ = run_to_end(e)
    assert [c[0] for c in calls] == [f(1), f(2), h(2)] and capped.exit == 2 and finished == [capped]
    assert not engine().add(job(17, min_exit=3), 0.0)  # f1 + f2 + f3 + h3: 18 ms
    e = engine()
    j = job(19, min_exit=3, every_exit=True)  # no head below min_exit, even for a stream
    assert e.add(j, 0.0)
    assert [c[0] for c in run_to_end(e)[0]] == [f(1), f(2), f(3), h(3)]


def test_cancelled_requests_leave_their_queue():
    e = engine()
    a, b = job(100), job(100)
    e.add(a, 0.0)
    e.add(b, 0.0)
    e.cancel(a)
    plan = e.plan(0.0)
    assert plan.jobs == [b] and e.waiting == 0
    e.ran(plan.step, plan.jobs, 0.006, 0.006)
    e.cancel(b)
    assert e.plan(0.006).step is None and e.waiting == 0


def serve_arrivals(max_batch: int, arrivals_ms: list[float], budget_ms: float):
    """Requests arrive over time; each call takes its median time. Returns the jobs and, per job, when its
    first exit was ready (None: never)."""
    e = engine(max_batch=max_batch)
    jobs = [job(budget_ms, now=t * MS) for t in arrivals_ms]
    first = {}
    now, pending = 0.0, list(jobs)
    while True:
        while pending and pending[0].arrival <= now + 1e-12:
            e.add(pending.pop(0), now)
        plan = e.plan(now)
        if plan.step is None:
            if not pending:
                return jobs, first
            now = pending[0].arrival
            continue
        now += duration(e, plan.step, len(plan.jobs))
        if plan.step.kind == HEAD:
            for j in plan.jobs:
                first.setdefault(j.id, now)
        e.ran(plan.step, plan.jobs, duration(e, plan.step, len(plan.jobs)), now)


def test_under_overload_stage_batching_answers_more_and_never_late():
    """40 requests in 100 ms with 25 ms budgets, exit 1 taking 10 ms (4 at once: 17.5 ms): four times what one
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
    prior = {1: {b: {"p50": 10.0 * b, "p95": 10.0 * b} for b in (1, 2, 4, 8)}}  # f1
    prior.update({k: {b: {"p50": 4.0 * b, "p95": 4.0 * b} for b in (1, 2, 4, 8)} for k in (2, 3, 4)})  # f2, h1, h2
    e = StageEngine(LatencyProfile(prior, cumulative=False), num_stages=2, max_batch=8)
    for _ in range(8):
        e.add(job(200), 0.0)
    assert len(e.plan(0.0).jobs) == 1


def test_a_request_whose_next_stage_cannot_fit_is_answered_at_once():
    e = engine()
    j = job(13)  # after f1 (6 ms), f2 + h2 (8 ms) no longer fit: head 1, and that is the answer
    e.add(j, 0.0)
    plan = e.plan(0.0)
    e.ran(plan.step, plan.jobs, 0.006, 0.006)
    plan = e.plan(0.006)
    assert plan.step == h(1) and e.ran(plan.step, plan.jobs, 0.004, 0.010) == [j] and j.state == "done"
    assert e.waiting == 0
    # one that could go on, but only after a call starting now: answered when that call is planned, not after it
    e = engine(max_batch=1)
    old = job(19, every_exit=True)
    e.add(old, 0.0)
    for t, d in ((0.006, 0.006), (0.010, 0.004)):
        run = e.plan(t - d)
        e.ran(run.step, run.jobs, d, t)
    assert old.exit == 1 and old.next == f(2)  # f2 + h2 must start by 11 ms
    new = job(13, now=0.010)  # its f1 must start now, and takes until 16 ms
    e.add(new, 0.010)
    plan = e.plan(0.010)
    assert plan.jobs == [new] and plan.finished == [old] and old.exit == 1 and old.state == "done"


def test_features_without_their_head_fall_back_to_it_when_going_on_no_longer_fits():
    """A request that went on without head 1 and then waits too long at f2 (a burst ahead of it) gets head 1
    rather than nothing."""
    e = engine(max_batch=1)
    j = job(21)  # after f1 at 6 ms: f2 + h2 end at 14 ms, fits
    e.add(j, 0.0)
    run = e.plan(0.0)
    e.ran(run.step, run.jobs, 0.006, 0.006)
    assert j.next == f(2) and j.exit == 0
    plan = e.plan(0.015)  # nothing ran for 9 ms: f2 + h2 would end at 23 ms, head 1 at 19 ms
    assert plan.step == h(1) and plan.jobs == [j]
    assert e.ran(plan.step, plan.jobs, 0.004, 0.019) == [j] and j.exit == 1 and j.state == "done"
