"""Latency profiles: per exit and batch size, a prior measured by ``anytime profile``, corrected online.

The scheduler plans with a high quantile (p95 by default), not the mean: a plan built on the mean misses
about half of the tight deadlines.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyProfile:
    """Service-time model of one endpoint.

    ``prior[exit][batch]`` holds quantiles in milliseconds ({"p50", "p95", "p99"}, optionally "samples_ms").
    Two online corrections follow the endpoint as load and hardware drift: every observation updates one
    slowdown factor (observed / prior mean, exponentially smoothed) that scales every exit's prior, because
    contention slows all exits alike; and once ``min_samples`` latencies of an (exit, batch) pair are in, the
    quantile of its last ``window`` observations is used when it is higher.
    """

    def __init__(self, prior: dict, quantile: float = 0.95, window: int = 64, min_samples: int = 16,
                 slowdown_alpha: float = 0.3):
        if not prior:
            raise ValueError("a latency profile needs at least one exit")
        self.prior = {int(e): {int(b): dict(q) for b, q in per_batch.items()} for e, per_batch in prior.items()}
        self.quantile = quantile
        self.min_samples = min_samples
        self._window = window
        self._observed: dict[tuple[int, int], deque] = {}
        # Load on the endpoint's machine slows every exit alike: one factor, observed / prior mean, smoothed.
        self.slowdown = 1.0
        self._alpha = slowdown_alpha

    @property
    def exits(self) -> list[int]:
        return sorted(self.prior)

    def observe(self, exit: int, batch: int, seconds: float) -> None:
        self._observed.setdefault((exit, batch), deque(maxlen=self._window)).append(seconds)
        ratio = seconds / max(self._prior_mean(exit, batch), 1e-6)
        self.slowdown = min(max((1 - self._alpha) * self.slowdown + self._alpha * ratio, 0.5), 10.0)

    def predict(self, exit: int, batch: int = 1, quantile: float | None = None) -> float:
        """Predicted service time in seconds at the planning quantile.

        Exit k+1 runs everything exit k runs and more, so the prediction never decreases with depth: noisy
        measurements that say otherwise are lifted to the slowest shallower exit.
        """
        return max(self._predict_one(e, batch, quantile) for e in self.exits if e <= exit)

    def expected(self, exit: int, batch: int = 1) -> float:
        """Mean service time in seconds (also never decreasing with depth).

        Waits behind other requests add up their *expected* times: a sum of p95s would be far more pessimistic
        than the p95 of the sum and make admission control refuse work it could do.
        """
        return max(self._mean_one(e, batch) for e in self.exits if e <= exit)

    def _mean_one(self, exit: int, batch: int) -> float:
        scaled = self._prior_mean(exit, batch) * self.slowdown
        seen = self._observed.get((exit, batch))
        if seen is not None and len(seen) >= self.min_samples:
            return max(scaled, float(np.mean(np.fromiter(seen, float))))
        return scaled

    def _prior_mean(self, exit: int, batch: int) -> float:
        per_batch = self.prior[exit]
        stats = per_batch[batch if batch in per_batch else min(per_batch, key=lambda x: abs(x - batch))]
        if stats.get("samples_ms"):
            return float(np.mean(stats["samples_ms"])) / 1000.0
        return float(stats.get("mean", self._prior_quantile(exit, batch, 0.5))) / 1000.0

    def _predict_one(self, exit: int, batch: int, quantile: float | None) -> float:
        q = self.quantile if quantile is None else quantile
        scaled = self._prior_quantile(exit, batch, q) / 1000.0 * self.slowdown
        seen = self._observed.get((exit, batch))
        if seen is not None and len(seen) >= self.min_samples:
            return max(scaled, float(np.quantile(np.fromiter(seen, float), q)))
        return scaled

    def _prior_quantile(self, exit: int, batch: int, q: float) -> float:
        per_batch = self.prior[exit]
        b = batch if batch in per_batch else min(per_batch, key=lambda x: abs(x - batch))
        stats = per_batch[b]
        if stats.get("samples_ms"):
            return float(np.quantile(stats["samples_ms"], q))
        points = sorted((float(k[1:]) / 100, float(v)) for k, v in stats.items() if k[0] == "p" and k[1:].isdigit())
        qs, vals = zip(*points)
        return float(np.interp(q, qs, vals))

    @classmethod
    def from_manifest(cls, profile: dict, **kwargs) -> "LatencyProfile":
        """From the manifest's ``latency_profile`` entry for one endpoint kind ({"exits": {k: {b: stats}}})."""
        return cls(profile["exits"], **kwargs)
