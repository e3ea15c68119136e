"""Custom metrics of a Triton python-backend model, written to Triton from one thread.

Why not call ``Metric.increment`` where the event happens:

- **It crashes Triton when two threads do it.** In the python backend's stub (24.x), each update of a ``Metric``
  rewrites that object's shared-memory block and frees the previous one, while the server process may still be
  reading it; the stub releases the GIL during the round trip, so two Python threads updating the same metric
  race. The server then reads freed memory and dies with signal 11. Five of the six Triton segfaults seen while
  serving the progressive model (which updated its metrics from its worker thread and from ``execute``) resolve
  to ``Metric::LoadFromSharedMemory`` or ``Metric::Increment`` under ``ProcessMetricRequest`` in
  ``libtriton_python.so``. A reproduction (``benchmarks/triton_metric_race.py`` up to 8c4f6c5, then retired with
  its answer known): two threads calling ``increment`` killed Triton within 1.5-1.6 s in 3 runs of 3; through
  this writer, Triton survived 3 runs of 15 s with every update counted.
- **Each update is a round trip to the server process.** A worker that counts a call's runs, images and times
  paid four of them per call on its critical path; here it pays a dict update.

So events only add to a pending total (any thread, under a lock), and one thread writes the totals to Triton: the
metric families' order decides the order of each write, so a reader who sees a later family's update also sees
what was pending for the earlier ones at that moment (tests wait for the outcome counters, written last).

- **Even from one thread, the writes cost the model's graphs.** On two cores, the writer's round trips run while the
  next ONNX graph wants both cores: a request alone to exit 4 made 20 writes, and taking them out made it about
  0.9 ms faster (22.1 -> 21.2 ms p50 through Triton, alternating). So the writer can wait ``interval_s`` after
  the first pending event: the events of that moment coalesce into one write per metric. Prometheus scrapes every
  few seconds; a tenth of a second of delay is invisible there.

Imports nothing from Triton: the metrics are passed in.
"""

from __future__ import annotations

import threading


class MetricWriter:
    """Buffers increments of Triton ``Metric`` objects and writes them from a thread of its own.

    ``add(metric, value)`` from any thread; ``close()`` writes what is pending and stops the thread (call it in the
    model's ``finalize``, before its metric families go). Metrics are written in the order they were first
    registered with ``track`` (untracked ones last), every pending one each round. A round starts ``interval_s``
    after the first event pending for it (0: at once), or at once on ``close``.
    """

    def __init__(self, name: str = "anytime-metrics", interval_s: float = 0.0):
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self.interval_s = interval_s
        self._pending: dict[int, list] = {}  # id(metric) -> [metric, total] (Triton's objects need not hash)
        self._rank: dict[int, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.errors = 0  # updates Triton refused (e.g. while shutting down); counted, never raised
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def track(self, *metrics) -> None:
        """Fix the write order: metrics tracked earlier are written earlier in each round."""
        with self._cond:
            for m in metrics:
                self._rank.setdefault(id(m), len(self._rank))

    def add(self, metric, value: float = 1.0) -> None:
        with self._cond:
            if self._closed:
                return
            entry = self._pending.get(id(metric))
            if entry is None:
                self._pending[id(metric)] = [metric, value]
            else:
                entry[1] += value
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self.interval_s and not self._closed:  # let the events of the next moment join this round
                    self._cond.wait_for(lambda: self._closed, timeout=self.interval_s)
                batch, self._pending = self._pending, {}
                if not batch and self._closed:
                    return
                order = sorted(batch.items(), key=lambda kv: self._rank.get(kv[0], len(self._rank)))
            for _, (metric, value) in order:
                try:
                    metric.increment(value)
                except Exception:
                    self.errors += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
