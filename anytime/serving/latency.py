"""Latency model of one inference endpoint: a per-exit base time times a noise factor learnt online.

Service time of exit k is modelled as ``T(k) = base(k) * R``: ``base(k)`` is the prior mean of exit k (from the
gateway's calibration or ``anytime profile``), and ``R`` a multiplicative factor shared by every exit, because
what moves latency on a serving machine (a noisy neighbour, a cold cache, a throttled core) slows every exit
alike. Sharing ``R`` is what lets the model follow the endpoint in both directions: *any* exit's observation
refreshes it, so a model that turned pessimistic and now only runs exit 1 still sees exit 1 get fast again.

``R`` is estimated from the observations of the last ``horizon_s`` seconds (at most ``window`` of them):

- **recent and time-decayed**: older observations drop out, so a slowdown is forgotten within ``horizon_s`` of
  its end, even with no traffic at all (then the prior is back);
- **blended with the prior while data is thin**: with n < ``min_samples`` recent observations, quantile and mean
  are the weighted mix n : (min_samples - n) of the recent and the prior value;
- **censored observations count**: a call that failed or timed out after ``t`` seconds is recorded as taking
  ``t`` (a lower bound, not ignored: ignoring them is how a model stays optimistic while calls time out);
- **bounded**: ``R`` is clipped to ``ratio_bounds``.

Every query is O(1) or O(log window): the sorted window, its prefix sums and the planning quantile are cached
and recomputed only when an observation enters or leaves, never per decision.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np


class LatencyProfile:
    """Service-time model of one endpoint; times in seconds, the clock is the caller's (``now``)."""

    def __init__(self, prior: dict, quantile: float = 0.95, window: int = 64, horizon_s: float = 5.0,
                 min_samples: int = 8, ratio_bounds: tuple[float, float] = (0.25, 8.0), cumulative: bool = True):
        if not prior:
            raise ValueError("a latency profile needs at least one exit")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"the planning quantile must be in (0, 1), got {quantile}")
        self.prior = {int(e): {int(b): dict(q) for b, q in per_batch.items()} for e, per_batch in prior.items()}
        self.quantile = quantile
        self.window, self.horizon_s, self.min_samples = window, horizon_s, min_samples
        self.lo, self.hi = ratio_bounds
        self.exits = sorted(self.prior)
        # base mean per (exit, batch). With ``cumulative`` (exits), non-decreasing with depth: exit k+1 runs all
        # of exit k and more. Stages of progressive execution are not cumulative: stage 2 can be cheaper than 1.
        self._base: dict[tuple[int, int], float] = {}
        batches = sorted({b for per in self.prior.values() for b in per})
        for b in batches:
            running = 0.0
            for e in self.exits:
                mean = _mean_ms(self._stats(e, b)) / 1e3
                running = max(running, mean) if cumulative else mean
                self._base[(e, b)] = running
        self._prior_ratios = _prior_ratios(self.prior)  # sorted pseudo-samples of R from the prior
        self._prior_q = _quantile(self._prior_ratios, quantile)
        self._prior_mean = float(np.mean(self._prior_ratios))
        self._prior_sd = float(np.std(self._prior_ratios))
        self._prior_prefix = [0.0, *np.cumsum(self._prior_ratios).tolist()]
        self._recent: deque[tuple[float, float]] = deque()  # (time, ratio), oldest first
        self._sorted: list[float] = []
        self._prefix: list[float] = [0.0]  # prefix sums of _sorted, for the residual-life query
        self._cache: dict[float, float] = {}
        self._mean = self._prior_mean
        self._sd: float | None = None  # computed when first asked for after a change (spread)
        self.observations = 0
        self.censored = 0
        self.version = 0  # changes whenever a prediction may: callers may cache predictions under it

    # -- learning --------------------------------------------------------------------------------------
    def observe(self, exit: int, seconds: float, now: float, batch: int = 1, censored: bool = False) -> None:
        """Record one call of ``exit`` that took ``seconds`` (at least that long when ``censored``)."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        ratio = min(max(seconds / self.base(exit, batch), self.lo), self.hi)
        self._recent.append((now, ratio))
        bisect.insort(self._sorted, ratio)
        if len(self._recent) > self.window:
            self._drop_oldest()
        self.observations += 1
        self.censored += bool(censored)
        self._changed()

    def stale_slowdown(self, now: float, age_s: float) -> float:
        """How many times slower than its prior the model predicts (its mean factor over the prior's), when that is
        learnt from observations all older than ``age_s``; else 1. A gateway that refuses every request on such a
        prediction would never correct it, as refused requests bring no observations (``Scheduler.admit`` then lets
        one through as a probe)."""
        if self._recent and now - self._recent[-1][0] > age_s and self._mean > self._prior_mean:
            return self._mean / self._prior_mean
        return 1.0

    def tick(self, now: float) -> None:
        """Forget observations older than the horizon (O(1) unless something expires)."""
        expired = False
        while self._recent and now - self._recent[0][0] > self.horizon_s:
            self._drop_oldest()
            expired = True
        if expired:
            self._changed()

    def _drop_oldest(self) -> None:
        _, ratio = self._recent.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, ratio)]

    def _changed(self) -> None:
        self.version += 1
        self._cache.clear()
        self._prefix = [0.0, *np.cumsum(self._sorted).tolist()] if self._sorted else [0.0]
        self._mean = self._blend(self._prefix[-1] / len(self._sorted) if self._sorted else 0.0, self._prior_mean)
        self._sd = None

    def _blend(self, recent: float, prior: float) -> float:
        n = len(self._sorted)
        if n >= self.min_samples:
            return recent
        return (n * recent + (self.min_samples - n) * prior) / self.min_samples

    # -- predictions -----------------------------------------------------------------------------------
    def base(self, exit: int, batch: int = 1) -> float:
        """Prior mean service time of ``exit`` at ``batch`` (seconds; non-decreasing in depth when cumulative).

        A batch size that was not measured is interpolated linearly between the nearest measured ones; beyond
        the largest, each extra image costs what one image cost there (no further batching gain assumed)."""
        key = (exit, batch)
        if key not in self._base:
            sizes = sorted(b for e, b in self._base if e == exit)
            lo = max((b for b in sizes if b < batch), default=None)
            hi = min((b for b in sizes if b > batch), default=None)
            if lo is None:
                value = self._base[(exit, hi)] * batch / hi
            elif hi is None:
                value = self._base[(exit, lo)] * batch / lo
            else:
                a, b = self._base[(exit, lo)], self._base[(exit, hi)]
                value = a + (b - a) * (batch - lo) / (hi - lo)
            self._base[key] = value
        return self._base[key]

    def ratio(self, quantile: float | None = None) -> float:
        """The noise factor R at ``quantile`` (default: the planning quantile)."""
        q = self.quantile if quantile is None else quantile
        value = self._cache.get(q)
        if value is None:
            prior = self._prior_q if q == self.quantile else _quantile(self._prior_ratios, q)
            value = self._cache[q] = self._blend(_quantile(self._sorted, q) if self._sorted else 0.0, prior)
        return value

    def predict(self, exit: int, batch: int = 1, quantile: float | None = None) -> float:
        """Service time (seconds) of ``exit`` at ``quantile`` (default: the planning quantile)."""
        return self.base(exit, batch) * self.ratio(quantile)

    def expected(self, exit: int, batch: int = 1) -> float:
        """Mean service time (seconds): what a request queued behind this one waits for it, on average."""
        return self.base(exit, batch) * self._mean

    def spread(self, exit: int, batch: int = 1) -> float:
        """Standard deviation of the service time (seconds): what sums of many calls need beyond their means, as
        the noise of calls that run one after another partly averages out (``predict`` at a quantile assumes it
        never does)."""
        if self._sd is None:  # only the stage engine asks: the upfront gateway's profiles never pay for it
            self._sd = self._blend(float(np.std(self._sorted)) if self._sorted else 0.0, self._prior_sd)
        return self.base(exit, batch) * self._sd

    def remaining(self, exit: int, elapsed: float, batch: int = 1) -> float:
        """Expected seconds left of a call that has run ``elapsed`` seconds: E[T - t | T > t].

        Not ``max(mean - t, 0)``: a call that has outlived its mean is a slow one, and slow calls have a tail.
        """
        base = self.base(exit, batch)
        r = elapsed / base
        ratios, prefix = (self._sorted, self._prefix) if len(self._sorted) >= self.min_samples else (
            self._prior_ratios, self._prior_prefix)
        i = bisect.bisect_right(ratios, r)
        above = len(ratios) - i
        if above == 0:  # longer than anything seen: assume it is about to end, but not that it already has
            return base * max(self._mean - r, 0.1 * self._mean, 0.0)
        return base * ((prefix[-1] - prefix[i]) / above - r)

    def describe(self) -> dict:
        """What the model believes now (for GetModelInfo, metrics and logs)."""
        return {"ratio_q": self.ratio(), "ratio_mean": self._mean, "recent": len(self._sorted),
                "observations": self.observations, "censored": self.censored}

    # -- construction --------------------------------------------------------------------------------------
    def _stats(self, exit: int, batch: int) -> dict:
        per_batch = self.prior[exit]
        return per_batch[batch if batch in per_batch else min(per_batch, key=lambda x: abs(x - batch))]

    @classmethod
    def from_samples(cls, samples_ms: dict[int, list[float]], **kwargs) -> "LatencyProfile":
        """From batch-1 latency samples in milliseconds per exit (what calibration measures)."""
        return cls({e: {1: {"samples_ms": list(s)}} for e, s in samples_ms.items()}, **kwargs)

    @classmethod
    def from_manifest(cls, profile: dict, **kwargs) -> "LatencyProfile":
        """From the manifest's ``latency_profile`` entry for one endpoint kind ({"exits": {k: {b: stats}}})."""
        return cls(profile["exits"], **kwargs)


def _mean_ms(stats: dict) -> float:
    if stats.get("samples_ms"):
        return float(np.mean(stats["samples_ms"]))
    if "mean" in stats:
        return float(stats["mean"])
    return _interp_quantile(stats, 0.5)


def _interp_quantile(stats: dict, q: float) -> float:
    points = sorted((float(k[1:]) / 100, float(v)) for k, v in stats.items() if k[0] == "p" and k[1:].isdigit())
    if not points:
        raise ValueError(f"latency stats need samples_ms, a mean or pNN quantiles, got {sorted(stats)}")
    qs, vals = zip(*points)
    return float(np.interp(q, qs, vals))


def _prior_ratios(prior: dict, points: int = 64) -> list[float]:
    """Pseudo-samples of R = latency / mean from the prior: pooled over exits (batch 1 where measured)."""
    ratios: list[float] = []
    for per_batch in prior.values():
        stats = per_batch.get(1) or next(iter(per_batch.values()))
        mean = _mean_ms(stats)
        if mean <= 0:
            continue
        if stats.get("samples_ms"):
            ratios += [s / mean for s in stats["samples_ms"]]
        else:
            qs = (np.arange(points) + 0.5) / points
            ratios += [_interp_quantile(stats, q) / mean for q in qs]
    if not ratios:
        raise ValueError("the latency prior has no usable statistics")
    return sorted(ratios)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (numpy's default method), in O(1)."""
    n = len(sorted_values)
    if n == 1:
        return sorted_values[0]
    pos = q * (n - 1)
    i = int(pos)
    if i >= n - 1:
        return sorted_values[-1]
    return sorted_values[i] + (sorted_values[i + 1] - sorted_values[i]) * (pos - i)
