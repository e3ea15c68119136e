"""How late the gateway's event loop runs: what an answer sent "just before the deadline" must allow for.

A progressive request is answered shortly before its deadline with the deepest exit it has. Between deciding
to answer and the client holding the answer, the event loop must get round to the request, build the response
and hand it to gRPC. On an idle loop that takes well under a millisecond; during a burst, when the loop is busy
admitting and refusing hundreds of requests, a callback can run tens of milliseconds late. A fixed margin is
either wasteful when idle or too small under a burst, so the gateway measures the lag (a heartbeat that sleeps
a fixed interval and records how late it wakes) and answers that much earlier.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class LoopLag:
    """A heartbeat on the running loop; ``recent_s`` is the worst lag seen within ``window_s``.

    The worst, not a mean: the answer margin must cover the slow moments, which are exactly the ones a mean
    hides. The window makes it forget a burst a few seconds after it ended.
    """

    def __init__(self, interval_s: float = 0.005, window_s: float = 2.0):
        self.interval = interval_s
        self.window = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag), lags only above 0.5 ms
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def observe(self, lag_s: float, now: float) -> None:
        """Record a lag measured at ``now`` (the heartbeat does; tests call it directly)."""
        self._forget(now)
        if lag_s > 0.0005:
            # keep the deque a decreasing sequence of lags: an older, smaller lag can never be the maximum again
            while self._samples and self._samples[-1][1] <= lag_s:
                self._samples.pop()
            self._samples.append((now, lag_s))

    def recent_s(self, now: float | None = None) -> float:
        self._forget(time.monotonic() if now is None else now)
        return self._samples[0][1] if self._samples else 0.0

    def _forget(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    async def _beat(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.observe(now - t0 - self.interval, now)
