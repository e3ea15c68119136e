"""The scheduler on a simulated clock: exit choice, EDF, admission, shedding, online profiles, routing."""

import random

import pytest

from anytime.serving.latency import LatencyProfile
from anytime.serving.scheduler import (DEADLINE_EXCEEDED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, Rejected, Request,
                                     Scheduler, SchedulerConfig)
from anytime.serving.simulate import SimRequest, simulate

MS = 1e-3


def profile(*p95_ms, spread=0.0):
    """A profile whose exit k has p50 = p95 * (1 - spread) and the given p95 (ms)."""
    return LatencyProfile({k: {1: {"p50": v * (1 - spread), "p95": v, "p99": v * 1.05}}
                           for k, v in enumerate(p95_ms, start=1)})


def sched(**kw):
    """A scheduler whose deadline arithmetic is exact: no margin, no safety for the queue's noise (tested apart)."""
    profiles = kw.pop("profiles", {"a": profile(10, 20, 30)})
    kw.setdefault("protect_z", 0.0)
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
    assert e.value.code == DEADLINE_EXCEEDED and s.queued == 0


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
    for i in range(p.min_samples):
        p.observe(3, 0.060, now=i * 0.01)  # exit 3 became twice as slow
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
    # base = mean per exit lifted to the slowest shallower exit (5, 5, 9) times one pooled noise factor (p95/p50 = 2)
    assert [round(p.predict(e) * 1e3, 6) for e in (1, 2, 3)] == [10, 10, 18]


def test_decision_cost_does_not_grow_with_the_queue(monkeypatch):
    """Latency predictions per admission and per dispatch are a constant, not one per queued request."""
    calls = {"n": 0}
    real_predict, real_expected = LatencyProfile.predict, LatencyProfile.expected

    def counting(real):
        def f(self, *a, **k):
            calls["n"] += 1
            return real(self, *a, **k)
        return f

    monkeypatch.setattr(LatencyProfile, "predict", counting(real_predict))
    monkeypatch.setattr(LatencyProfile, "expected", counting(real_expected))
    per_queue = {}
    for n in (16, 200):
        s = sched()
        s.submit(Request(deadline=1000.0, arrival=0.0), now=0.0)
        s.dispatch(0.0)  # one running, the rest queue
        for i in range(n):
            s.submit(Request(deadline=100.0 + i, arrival=0.0), now=0.0)
        calls["n"] = 0
        s.submit(Request(deadline=50.0, arrival=0.0), now=0.0)
        admit_calls = calls["n"]
        calls["n"] = 0
        s.complete(next(iter(s.busy["a"].values())), now=0.01, latency=0.01)
        s.dispatch(0.01)
        per_queue[n] = (admit_calls, calls["n"])
    assert per_queue[200] == per_queue[16], per_queue


def test_a_burst_reserves_capacity_at_admission_and_admitted_requests_meet_budgets():
    """200 requests arrive at once (10x what fits): each admission sees the reservations before it, even
    though none has been decoded yet; the admitted ones then all finish in time."""
    s = sched()
    admitted, codes = [], []
    for i in range(200):
        r = Request(deadline=0.100, arrival=0.0, payload=i)
        try:
            s.admit(r, now=0.0)  # reserved, not ready: its image is still being decoded
            admitted.append(r)
        except Rejected as e:
            codes.append(e.code)
    assert 5 <= len(admitted) <= 10 and set(codes) == {RESOURCE_EXHAUSTED}
    now, done = 0.002, []  # decoding took 2 ms
    for r in admitted:
        s.mark_ready(r, now)
    while len(done) < len(admitted):
        (a,), expired = s.dispatch(now)
        assert expired == []
        now += 0.010 if a.exit == 1 else 0.020 if a.exit == 2 else 0.030  # exactly the predicted times
        s.complete(a, now)
        done.append(now <= a.request.deadline)
    assert all(done)


def test_a_call_that_outlived_its_mean_still_counts_as_work_in_flight():
    s = sched()
    s.submit(Request(deadline=1.0, arrival=0.0), now=0.0)
    (a,), _ = s.dispatch(0.0)
    mean = a.expected
    assert s.in_flight_work(0.0) == pytest.approx(mean, rel=0.2)
    assert s.in_flight_work(2 * mean) > 0.0  # a slow call: it still holds the slot


def test_queued_work_is_drained_by_every_endpoint_not_costed_on_one():
    def admitted(profiles):
        s = Scheduler(profiles, SchedulerConfig(margin_ms=0.0, gap_ms=0.0))
        n = 0
        for _ in range(50):
            try:
                s.submit(Request(deadline=0.100, arrival=0.0), now=0.0)
                n += 1
            except Rejected:
                pass
        return n

    one = admitted({"a": profile(10, 20, 30)})
    two = admitted({"a": profile(10, 20, 30), "b": profile(10, 20, 30)})
    slow_pair = admitted({"a": profile(10, 20, 30), "b": profile(20, 40, 60)})
    assert two >= 2 * one - 1 and one < slow_pair < two, (one, slow_pair, two)


def test_a_request_that_would_miss_on_the_free_slow_endpoint_waits_for_the_fast_one():
    s = Scheduler({"slow": profile(50, 60, 70), "fast": profile(5, 10, 15)}, SchedulerConfig(margin_ms=0.0))
    s.submit(Request(deadline=1.0, arrival=0.0), now=0.0)
    (first,), _ = s.dispatch(0.0)
    assert first.endpoint == "fast"
    tight = Request(deadline=0.030, arrival=0.0)  # 30 ms: misses on slow (50 ms), fits on fast once it is free
    s.submit(tight, now=0.0)
    started, expired = s.dispatch(0.0)
    assert started == [] and expired == [] and s.queued == 1
    s.complete(first, now=0.015, latency=0.015)
    (a,), _ = s.dispatch(0.015)
    assert a.request is tight and a.endpoint == "fast"


def test_a_request_whose_first_stage_is_done_keeps_only_what_it_still_needs_reserved():
    """Progressive execution reports a request's first stage done; its reservation shrinks to the rest (a head),
    and the room it frees admits another request."""
    s = sched(fixed_exit=1)
    first = [Request(deadline=35 * MS, arrival=0.0) for _ in range(3)]
    for r in first:  # three first exits of 10 ms each fill the 35 ms
        s.admit(r, now=0.0)
    with pytest.raises(Rejected):
        s.admit(Request(deadline=35 * MS, arrival=0.0), now=0.0)
    s.progress(first[0], 0.4, now=0.0)  # 6 of its 10 ms done: 4 ms left
    s.progress(first[0], 0.9, now=0.0)  # a share never grows back
    assert first[0].share == 0.4
    s.admit(Request(deadline=35 * MS, arrival=0.0), now=0.0)


def test_every_deadline_keeps_a_safety_for_the_noise_of_the_work_before_it():
    """Calls vary: a queue of them ends later than the sum of their means about half the time. With protect_z the
    admission keeps that many standard deviations of the queue's sum (variances add), so the request that fits
    only by the means is refused at once instead of admitted and made late."""
    def queue(z: float) -> int:
        s = Scheduler({"a": profile(10, 20, 30, spread=0.5)}, SchedulerConfig(margin_ms=0.0, fixed_exit=1, protect_z=z))
        admitted = 0
        for _ in range(20):
            try:
                s.admit(Request(deadline=60 * MS, arrival=0.0), now=0.0)
                admitted += 1
            except Rejected as r:
                assert r.code == RESOURCE_EXHAUSTED
        return admitted

    exact, safe = queue(0.0), queue(1.64)
    assert 1 <= safe < exact, (safe, exact)


def test_an_images_decoding_is_work_until_it_is_prepared():
    """Admission counts a request's decoding (its own time, and work ahead of later deadlines); once decoded, it
    is neither, and the room it held admits another request."""
    s = sched(fixed_exit=1, prep_weight=1.0)  # exit 1: 10 ms; decoding delays what is behind it by all of its time
    with pytest.raises(Rejected) as r:  # 20 ms of decoding + 10 ms of exit 1 > 25 ms
        s.admit(Request(deadline=25 * MS, arrival=0.0, prep=20 * MS, prep_expected=20 * MS), now=0.0)
    assert r.value.code == DEADLINE_EXCEEDED and "decoding its image 20.0 ms" in str(r.value)
    big = Request(deadline=50 * MS, arrival=0.0, prep=30 * MS, prep_expected=30 * MS)
    s.admit(big, now=0.0)  # 30 + 10 <= 50
    s.admit(Request(deadline=55 * MS, arrival=0.0), now=0.0)  # behind it: 40 + 10 <= 55
    with pytest.raises(Rejected):  # another 10 ms due by 55 ms does not fit behind the decoding: 50 + 10 > 55
        s.admit(Request(deadline=55 * MS, arrival=0.0), now=0.0)
    s.mark_ready(big, now=0.0)  # decoded (at no time, on this clock): its 30 ms are no longer work
    s.admit(Request(deadline=55 * MS, arrival=0.0), now=0.0)  # 10 + 10 + 10 <= 55


def test_a_request_whose_exits_fit_only_at_the_mean_still_runs_its_first_exit():
    """Admitted means answered whenever an exit could still give one: a request that waited past the point where
    exit 1 fits at the planning quantile, but not past where it fits at the mean, runs exit 1 instead of expiring."""
    def run(rescue: bool):
        s = Scheduler({"a": profile(10, 20, 30, spread=0.4)}, SchedulerConfig(margin_ms=0.0, rescue=rescue, protect_z=0.0))
        req = Request(deadline=100 * MS, arrival=0.0)
        s.submit(req, now=0.0)
        return s.dispatch(now=92 * MS)  # 8 ms left: exit 1 is 10 ms at p95, about 6-7 at the mean

    (a,), expired = run(True)
    assert a.exit == 1 and not expired
    started, (gone,) = run(False)
    assert not started


def test_narrow_chooses_the_group_of_the_deepest_exit_that_fits_before_preparing():
    """Options at two input sizes (ids 1-2 at the small one, 3-4 at the large): the size is chosen before the image
    is prepared, from the deepest option that admission would take now; dispatch then chooses within that size."""
    def admitted(budget_ms, prep_ms=(0.0, 0.0)):
        s = sched(profiles={"a": profile(5, 8, 20, 30)})
        req = Request(deadline=budget_ms * MS, arrival=0.0, options=[1, 2, 3, 4])
        s.admit(req, now=0.0)
        groups = [([1, 2], prep_ms[0] * MS, prep_ms[0] * MS, 0.0), ([3, 4], prep_ms[1] * MS, prep_ms[1] * MS, 0.0)]
        return s, req, s.narrow(req, 0.0, groups)

    s, req, chosen = admitted(100)
    assert chosen == 1 and req.options == [3, 4]
    s.mark_ready(req, 0.0)
    (a,), _ = s.dispatch(0.0)
    assert a.exit == 4
    s, req, chosen = admitted(25)  # 20 ms fits, 30 does not: the large size, its first exit
    assert chosen == 1
    s.mark_ready(req, 0.0)
    (a,), _ = s.dispatch(0.0)
    assert a.exit == 3
    s, req, chosen = admitted(25, prep_ms=(1.0, 10.0))  # the large size's decoding leaves no room for it
    assert chosen == 0 and req.options == [1, 2] and req.prep == pytest.approx(1 * MS)
    s, req, chosen = admitted(10)
    assert chosen == 0
    s.mark_ready(req, 0.0)
    (a,), _ = s.dispatch(0.0)
    assert a.exit == 2


def test_narrow_keeps_queued_requests_in_time():
    """A deeper option that would make an admitted request late is not chosen: the small size is."""
    def narrowed(first_due_ms):
        s = sched(profiles={"a": profile(5, 8, 20, 30)})
        s.submit(Request(deadline=first_due_ms * MS, arrival=0.0, options=[1, 2, 3, 4]), now=0.0)  # its 5 ms reserved
        req = Request(deadline=21 * MS, arrival=0.0, options=[1, 2, 3, 4])  # due first: it goes first
        s.admit(req, now=0.0)
        return s.narrow(req, 0.0, [([1, 2], 0.0, 0.0, 0.0), ([3, 4], 0.0, 0.0, 0.0)])

    assert narrowed(first_due_ms=26) == 1  # 20 ms for it, then 5 for the other: in time
    assert narrowed(first_due_ms=22) == 0  # the other would end at 25 ms: the small size (8 + 5 ms)


def test_with_utilities_a_slightly_better_exit_that_is_probably_late_loses():
    """Exit 3 fits at the planning quantile but with little room; exit 2 is almost as good and surely in time."""
    profiles = {"a": profile(5, 10, 20, spread=0.3)}
    # exit 3: mean 15.7 ms, sd 2.2 ms, p95 19.9 ms against a 20 ms deadline: in time about 97.6 % of the time
    for utility, expected in [(None, 3), ({1: 0.1, 2: 0.295, 3: 0.30}, 2), ({1: 0.1, 2: 0.15, 3: 0.30}, 3)]:
        s = Scheduler(profiles, SchedulerConfig(margin_ms=0.0, protect_z=0.0), utility=utility)
        s.submit(Request(deadline=20.0 * MS, arrival=0.0), now=0.0)
        (a,), _ = s.dispatch(0.0)
        assert a.exit == expected, utility


def test_a_profile_that_refuses_everything_still_learns_through_probes():
    """A slowdown learnt, then refused requests bring no observations: once the observations are older than the
    probe interval, one infeasible request in each interval is admitted at its first exit, best effort."""
    s = sched(probe_interval_ms=200.0)
    for i in range(20):  # every call four times slower than the profile
        s.profiles["a"].observe(1, 40 * MS, now=i * 0.01)
    late = 0.19 + 0.25
    with pytest.raises(Rejected):  # 25 ms: below exit 1's predicted 40 ms
        s.submit(Request(deadline=0.19 + 25 * MS, arrival=0.19), now=0.19)  # observations still fresh
    with pytest.raises(Rejected):  # 5 ms: below what exit 1 needs even at the prior's speed (10 ms)
        s.submit(Request(deadline=late + 5 * MS, arrival=late), now=late)
    probe = Request(deadline=late + 25 * MS, arrival=late)
    s.submit(probe, now=late)
    assert probe.best_effort and s.probes == 1
    with pytest.raises(Rejected):  # one per interval
        s.submit(Request(deadline=late + 25 * MS, arrival=late), now=late + 0.01)
    s = sched(probe_interval_ms=0.0)
    for i in range(20):
        s.profiles["a"].observe(1, 40 * MS, now=i * 0.01)
    with pytest.raises(Rejected):
        s.submit(Request(deadline=late + 25 * MS, arrival=late), now=late)
