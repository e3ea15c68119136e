"""The scheduler on a simulated clock: exit choice, EDF, admission, shedding, online profiles, routing."""

import random

import pytest

from anytime.serve.profile import LatencyProfile
from anytime.serve.scheduler import (DEADLINE_EXCEEDED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, Rejected, Request,
                                     Scheduler, SchedulerConfig)
from anytime.serve.simulate import SimRequest, simulate

MS = 1e-3


def profile(*p95_ms, spread=0.0):
    """A profile whose exit k has p50 = p95 * (1 - spread) and the given p95 (ms)."""
    return LatencyProfile({k: {1: {"p50": v * (1 - spread), "p95": v, "p99": v * 1.05}}
                           for k, v in enumerate(p95_ms, start=1)})


def sched(**kw):
    profiles = kw.pop("profiles", {"a": profile(10, 20, 30)})
    return Scheduler(profiles, SchedulerConfig(margin_ms=0.0, **kw))


def test_loose_budget_gets_the_deepest_exit_and_tight_budget_a_shallower_one():
    for budget_ms, expected in [(100, 3), (25, 2), (12, 1)]:
        s = sched()
        s.submit(Request(deadline=budget_ms * MS, arrival=0.0), now=0.0)
        (a,), expired = s.dispatch(0.0)
        assert (a.exit, expired) == (expected, [])


def test_budget_below_the_first_exit_is_rejected_or_run_best_effort():
    s = sched()
    with pytest.raises(Rejected) as e:
        s.submit(Request(deadline=5 * MS, arrival=0.0), now=0.0)
    assert e.value.code == DEADLINE_EXCEEDED and "below the fastest exit" in str(e.value)
    s = sched(when_infeasible="first_exit")
    s.submit(Request(deadline=5 * MS, arrival=0.0), now=0.0)
    (a,), _ = s.dispatch(0.0)
    assert a.exit == 1 and a.request.best_effort


def test_past_deadlines_and_impossible_exit_ranges():
    s = sched()
    with pytest.raises(Rejected) as e:
        s.submit(Request(deadline=-1.0, arrival=0.0), now=0.0)
    assert e.value.code == DEADLINE_EXCEEDED
    with pytest.raises(Rejected) as e:
        s.submit(Request(deadline=1.0, arrival=0.0, min_exit=4), now=0.0)
    assert e.value.code == INVALID_ARGUMENT and "exits 1..3" in str(e.value)


def test_min_and_max_exit_are_respected():
    s = sched()
    s.submit(Request(deadline=1.0, arrival=0.0, max_exit=2), now=0.0)
    (a,), _ = s.dispatch(0.0)
    assert a.exit == 2
    s = sched()
    with pytest.raises(Rejected) as e:
        s.submit(Request(deadline=12 * MS, arrival=0.0, min_exit=2), now=0.0)  # exit 2 needs 20 ms
    assert e.value.code == DEADLINE_EXCEEDED and s.queue == []


def test_earliest_deadline_first():
    s = sched()
    s.submit(Request(deadline=1.0, arrival=0.0), now=0.0)
    (first,), _ = s.dispatch(0.0)  # occupies the only slot
    late, soon = Request(deadline=0.9, arrival=0.0), Request(deadline=0.5, arrival=0.0)
    s.submit(late, now=0.0)
    s.submit(soon, now=0.0)
    s.complete(first, now=0.03)
    (nxt,), _ = s.dispatch(0.03)
    assert nxt.request is soon


def test_a_queued_tight_request_makes_the_head_take_a_shallower_exit():
    s = sched()
    s.submit(Request(deadline=1.0, arrival=0.0), now=0.0)
    (busy,), _ = s.dispatch(0.0)
    head = Request(deadline=0.5, arrival=0.0)
    tight = Request(deadline=0.502, arrival=0.0)
    s.submit(head, now=0.0)
    s.submit(tight, now=0.0)
    s.complete(busy, now=0.465)  # head alone could take exit 3 (30 ms), but then `tight` (10 ms more) is late
    (a,), _ = s.dispatch(0.465)
    assert a.request is head and a.exit == 2


def test_overload_is_shed_with_resource_exhausted_and_admitted_requests_meet_budgets():
    s = sched()
    codes = []
    for i in range(10):  # ten simultaneous requests with 35 ms budgets; exit 1 takes 10 ms each
        try:
            s.submit(Request(deadline=35 * MS, arrival=0.0), now=0.0)
            codes.append("OK")
        except Rejected as e:
            codes.append(e.code)
    assert codes[:3] == ["OK"] * 3 and set(codes[3:]) == {RESOURCE_EXHAUSTED}


def test_expired_requests_are_failed_at_dispatch():
    s = sched()
    s.submit(Request(deadline=15 * MS, arrival=0.0), now=0.0)
    started, expired = s.dispatch(0.010)  # 5 ms left, exit 1 needs 10
    assert started == [] and len(expired) == 1


def test_online_observations_replace_the_prior():
    p = profile(10, 20, 30)
    s = Scheduler({"a": p}, SchedulerConfig(margin_ms=0.0))
    for _ in range(p.min_samples):
        p.observe(3, 1, 0.060)  # exit 3 became twice as slow
    s.submit(Request(deadline=50 * MS, arrival=0.0), now=0.0)
    (a,), _ = s.dispatch(0.0)
    assert a.exit == 2


def test_requests_go_to_the_endpoint_where_they_fit_best():
    s = Scheduler({"slow": profile(10, 40, 80), "fast": profile(5, 10, 15)}, SchedulerConfig(margin_ms=0.0))
    s.submit(Request(deadline=20 * MS, arrival=0.0), now=0.0)
    (a,), _ = s.dispatch(0.0)
    assert (a.endpoint, a.exit) == ("fast", 3)
    s.submit(Request(deadline=20 * MS, arrival=0.0), now=0.0)
    (b,), _ = s.dispatch(0.0)  # fast is busy: the slow one still fits exit 1
    assert (b.endpoint, b.exit) == ("slow", 1)


def _trace(rate_per_s, n, budgets_ms, latencies_ms, seed=0, jitter=0.1):
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        true = {("a", k): v * MS * (1 + rng.uniform(-jitter, jitter)) for k, v in enumerate(latencies_ms, 1)}
        out.append(SimRequest(arrival=t, budget=rng.choice(budgets_ms) * MS, true_latency=true, item=i))
    return out


def test_under_three_times_overload_admitted_requests_meet_their_budgets():
    lat = (10, 20, 30)
    capacity = 1 / (lat[-1] * MS)  # requests/s at the deepest exit
    trace = _trace(3 * capacity / 0.33, 600, [40, 60, 100], lat)  # ~3x the capacity even at exit 1
    out = simulate(sched(profiles={"a": profile(*[v * 1.1 for v in lat])}), trace)
    served = [o for o in out if o.status == "OK"]
    assert len(served) > 100 and {o.status for o in out} >= {"OK", RESOURCE_EXHAUSTED}
    assert sum(o.met for o in served) / len(served) >= 0.99


def test_light_load_meets_budgets_with_deep_exits():
    lat = (10, 20, 30)
    trace = _trace(0.5 / (lat[-1] * MS), 400, [45, 80], lat, seed=1)
    out = simulate(sched(profiles={"a": profile(*[v * 1.1 for v in lat])}), trace)
    assert sum(o.met for o in out) / len(out) >= 0.99
    assert sum(o.exit == 3 for o in out) / len(out) > 0.5


def test_unavailable_endpoints_are_skipped_and_none_left_is_unavailable():
    s = Scheduler({"a": profile(10, 20, 30), "b": profile(10, 20, 30)}, SchedulerConfig(margin_ms=0.0))
    s.set_available("a", False)
    s.submit(Request(deadline=1.0, arrival=0.0), now=0.0)
    (x,), _ = s.dispatch(0.0)
    assert x.endpoint == "b"
    s.set_available("b", False)
    with pytest.raises(Rejected) as e:
        s.submit(Request(deadline=1.0, arrival=0.0), now=0.0)
    assert e.value.code == "UNAVAILABLE"


def test_profile_predictions_never_decrease_with_depth():
    p = LatencyProfile({1: {1: {"p50": 5, "p95": 10}}, 2: {1: {"p50": 4, "p95": 8}}, 3: {1: {"p50": 9, "p95": 20}}})
    assert [round(p.predict(e) * 1e3, 6) for e in (1, 2, 3)] == [10, 10, 20]
