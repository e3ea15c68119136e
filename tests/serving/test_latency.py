"""The latency model follows its endpoint both ways, counts censored calls, and stays bounded."""

import numpy as np
import pytest

from anytime.serving.latency import LatencyProfile

MS = 1e-3
BASE_MS = {1: 10.0, 2: 12.0, 3: 14.0, 4: 16.0}


def calibrated(seed=0, n=20):
    """A profile from calibration-sized samples: exit k takes BASE_MS[k] x noise (lognormal, sigma 0.05)."""
    rng = np.random.default_rng(seed)
    return LatencyProfile.from_samples({k: (v * rng.lognormal(0, 0.05, n)).tolist() for k, v in BASE_MS.items()})


def serve(profile, start, seconds, rate, slowdown, exits=(1,), seed=1):
    """Feed observations of calls at ``rate``/s for ``seconds``, each exit's true time x ``slowdown``."""
    rng = np.random.default_rng(seed)
    t = start
    while t < start + seconds:
        k = exits[int(rng.integers(len(exits)))]
        profile.observe(k, BASE_MS[k] * MS * slowdown * rng.lognormal(0, 0.05), now=t)
        profile.tick(t)
        t += 1.0 / rate
    return t


def within(profile, exit, slowdown, tol=0.10):
    truth = BASE_MS[exit] * MS * slowdown
    return abs(profile.predict(exit, quantile=0.5) / truth - 1) <= tol


def test_a_slowdown_and_the_recovery_are_both_learnt_within_seconds_from_any_exit():
    p = calibrated()
    assert all(within(p, k, 1.0) for k in BASE_MS)
    t = serve(p, 0.0, 5.0, rate=50, slowdown=3.0)  # a noisy neighbour: everything 3x slower
    assert all(within(p, k, 3.0) for k in BASE_MS)  # learnt from exit 1 calls alone, for every exit
    # The neighbour leaves. The pessimistic model only dares exit 1 now; exit 1 getting fast is enough.
    t = serve(p, t, 1.5, rate=50, slowdown=1.0)
    assert all(within(p, k, 1.0) for k in BASE_MS), [p.predict(k, quantile=0.5) / MS for k in BASE_MS]


def test_pessimism_expires_without_any_traffic():
    """If a slowdown made every request infeasible, no call would ever run to refute it: the window expires."""
    p = calibrated()
    serve(p, 0.0, 1.0, rate=50, slowdown=6.0)
    assert p.predict(1, quantile=0.5) > 5 * BASE_MS[1] * MS
    p.tick(1.0 + p.horizon_s + 0.1)
    assert within(p, 1, 1.0) and within(p, 4, 1.0)


def test_censored_calls_raise_the_prediction_instead_of_being_ignored():
    p = calibrated()
    before = p.predict(2)
    for i in range(10):  # calls that timed out after 50 ms: at least 50 ms each
        p.observe(2, 0.050, now=i * 0.01, censored=True)
    assert p.predict(2) >= 0.045 > 3 * before and p.describe()["censored"] == 10


def test_the_noise_factor_is_bounded_and_thin_data_is_blended_with_the_prior():
    p = calibrated()
    p.observe(1, 1000.0, now=0.0)  # one absurd sample: bounded, and only 1/min_samples of the estimate
    assert p.ratio() <= p.hi
    assert p.predict(1, quantile=0.5) < (1 + p.hi / p.min_samples) * BASE_MS[1] * MS


def test_remaining_time_of_a_call_past_its_mean_is_not_zero():
    p = calibrated()
    mean = p.expected(3)
    assert p.remaining(3, 0.0) == pytest.approx(mean, rel=0.05)
    assert p.remaining(3, 2 * mean) > 0  # outlived its mean, still running: it still holds its slot
    assert p.remaining(3, 0.5 * mean) > 0.4 * mean


def test_the_spread_follows_the_recent_noise_of_the_calls():
    p = calibrated()  # sigma 0.05: a spread of about 5% of a call
    assert 0.02 < p.spread(4) / p.expected(4) < 0.1
    rng = np.random.default_rng(2)
    for i in range(64):  # a noisy neighbour: calls now vary by about 30%
        p.observe(1, BASE_MS[1] * MS * rng.lognormal(0, 0.3), now=i * 0.01)
    assert 0.2 < p.spread(4) / p.expected(4) < 0.45
    assert p.spread(4) / p.spread(1) == pytest.approx(p.expected(4) / p.expected(1))  # one noise factor, in scale
