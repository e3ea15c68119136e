"""The batch planner on an injected clock: batching, the exit chosen at dispatch, admission by the cheapest exit."""

import pytest

from anytime.serving.batching import BatchScheduler
from anytime.serving.latency import LatencyProfile
from anytime.serving.scheduler import DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, Rejected, Request, SchedulerConfig

MS = 1e-3
# exit -> batch -> ms; no noise (p50 = p95), so every prediction is exact
TIMES = {1: {1: 10, 2: 14, 4: 22, 8: 38}, 2: {1: 15, 2: 21, 4: 33, 8: 57}, 3: {1: 20, 2: 28, 4: 44, 8: 76}}


def profile(times=TIMES):
    return LatencyProfile({e: {b: {"p50": v, "p95": v} for b, v in per.items()} for e, per in times.items()})


def planner(slots=2, max_batch=8, **kw):
    return BatchScheduler({"a": profile()}, SchedulerConfig(margin_ms=0.0, slots_per_endpoint=slots, **kw),
                          max_batch=max_batch)


def ready(s, deadline_ms, now=0.0, **kw):
    r = Request(deadline=deadline_ms * MS, arrival=now, **kw)
    s.submit(r, now)
    return r


def test_an_idle_stack_runs_requests_side_by_side_at_the_deepest_exit_that_fits():
    s = planner(slots=2)
    a, b = ready(s, 100), ready(s, 100)
    calls, expired = s.dispatch(0.0)
    assert expired == [] and [(c.exit, c.batch) for c in calls] == [(3, 1), (3, 1)]
    assert {c.requests[0] for c in calls} == {a, b}


def test_a_loaded_stack_batches_ready_requests_and_never_beyond_max_batch():
    s = planner(slots=1, max_batch=4)
    for _ in range(10):
        ready(s, 1000)
    (call,), _ = s.dispatch(0.0)
    assert call.batch == 4 and call.exit == 3
    s.complete(call, 0.044, 0.044)
    (call,), _ = s.dispatch(0.044)
    assert call.batch == 4


def test_no_ready_request_waits_while_a_slot_is_free():
    """A batch takes only requests ready now: nobody waits for batch-mates, so no member starts later than alone."""
    s = planner(slots=2, max_batch=8)
    ready(s, 100)
    calls, _ = s.dispatch(0.0)
    assert [c.batch for c in calls] == [1]  # one free slot left, and it is not held for a mate
    late_comer = ready(s, 100, now=0.001)
    calls, _ = s.dispatch(0.001)
    assert [c.requests for c in calls] == [(late_comer,)]


def test_the_exit_is_chosen_at_dispatch_with_the_time_actually_left():
    s = planner(slots=1)
    r = ready(s, 25)
    s2 = planner(slots=1)
    r2 = ready(s2, 25)
    (call,), _ = s.dispatch(0.0)  # 25 ms left: exit 3 (20 ms)
    assert call.exit == 3
    (call2,), _ = s2.dispatch(0.008)  # 17 ms left when a slot frees: exit 2 (15 ms)
    assert call2.exit == 2 and call2.requests == (r2,)
    assert r.state == "running"


def test_a_batch_shrinks_or_goes_shallower_to_end_by_the_leaders_deadline():
    s = planner(slots=1, max_batch=8)
    rs = [ready(s, 23) for _ in range(4)]
    (call,), _ = s.dispatch(0.0)
    # exit 1 at 4 images takes 22 ms <= 23; exit 2 fits only 2 images (21 ms) and would leave 2 late
    assert (call.exit, call.batch) == (1, 4) and call.requests == tuple(rs)


def test_a_leader_no_exit_fits_runs_exit_1_if_it_fits_at_the_mean_else_it_expires():
    p = LatencyProfile({1: {1: {"p50": 10, "p95": 20}}, 2: {1: {"p50": 15, "p95": 30}}})
    s = BatchScheduler({"a": p}, SchedulerConfig(margin_ms=0.0, slots_per_endpoint=1))
    r = Request(deadline=0.015, arrival=0.0)
    s.submit(r, 0.0)
    (call,), expired = s.dispatch(0.0)
    assert (call.exit, expired, s.rescued) == (1, [], 1)
    s2 = BatchScheduler({"a": p}, SchedulerConfig(margin_ms=0.0, slots_per_endpoint=1))
    r2 = Request(deadline=0.015, arrival=0.0)
    s2.submit(r2, 0.0)
    calls, expired = s2.dispatch(0.008)  # 7 ms left: not even exit 1 at its mean
    assert (calls, expired, r2.state) == ([], [r2], "gone")


def test_admission_refuses_only_what_the_cheapest_exit_cannot_answer_in_time():
    s = planner(slots=1, max_batch=1)
    with pytest.raises(Rejected) as e:
        ready(s, 9)  # below exit 1 alone
    assert e.value.code == DEADLINE_EXCEEDED
    ready(s, 12)  # exit 1 fits (the deeper ones do not): admitted
    # two more at 25 ms: one slot, one image per call; the first runs 0-10, the second 10-20 at exit 1: admitted
    ready(s, 25)
    with pytest.raises(Rejected) as e:
        ready(s, 25)  # the third would end at 30 ms even at exit 1
    assert e.value.code == RESOURCE_EXHAUSTED and "overloaded" in str(e.value)


def test_admission_counts_batching_and_decoding():
    s = planner(slots=1, max_batch=4)
    for _ in range(4):
        ready(s, 30)  # 4 at once in one call of exit 1: 22 ms
    assert s.queued == 4
    with pytest.raises(Rejected):
        s.submit(Request(deadline=0.030, arrival=0.0, prep_expected=0.025), 0.0)  # 25 ms to decode + 10 ms of exit 1


def test_a_tight_newcomer_that_would_make_queued_requests_late_is_refused():
    s = planner(slots=1, max_batch=1)
    ready(s, 20)
    ready(s, 20)  # 0-10, 10-20 at exit 1: both in time
    with pytest.raises(Rejected) as e:
        ready(s, 15)  # due first: it would fit (0-10), but push one of the two past 20 ms
    assert "queued request" in str(e.value)


def test_cancelled_and_drained_requests_leave_the_queue():
    s = planner(slots=1)
    a, b = ready(s, 100), ready(s, 100)
    assert s.cancel(a) and s.queued == 1
    (call,), _ = s.dispatch(0.0)
    assert call.requests == (b,)
    c = ready(s, 100)
    assert s.drain() == [c] and s.queued == 0 and c.state == "gone"


def test_a_rescue_never_takes_the_slot_from_a_request_that_fits():
    p = LatencyProfile({1: {1: {"p50": 10, "p95": 20}}, 2: {1: {"p50": 15, "p95": 30}}})
    s = BatchScheduler({"a": p}, SchedulerConfig(margin_ms=0.0, slots_per_endpoint=1))
    doomed, fits = Request(deadline=0.015, arrival=0.0), Request(deadline=0.100, arrival=0.0)
    s.submit(doomed, 0.0)
    s.submit(fits, 0.0)
    (call,), expired = s.dispatch(0.0)
    assert expired == [doomed] and call.requests == (fits,) and s.rescued == 0


def test_without_a_queue_a_slow_looking_image_gets_its_chance_but_not_behind_one():
    s = planner(slots=1, max_batch=1)
    # 12 ms of decoding (sd 4 ms) + 10 ms of exit 1 = 22 ms > 21 ms at the mean, 18 ms a deviation faster
    alone = Request(deadline=0.021, arrival=0.0, prep_expected=0.012, prep_variance=0.004 ** 2)
    s.admit(alone, 0.0)
    assert s.queued == 1
    behind = Request(deadline=0.031, arrival=0.0, prep_expected=0.012, prep_variance=0.004 ** 2)
    with pytest.raises(Rejected):  # one ahead on the only slot: the mean decides (12 + 10 + 10 > 31)
        s.admit(behind, 0.0)
