"""The event-loop lag monitor: the worst recent lag, forgotten after its window; and a real heartbeat sees a
blocked loop."""

import asyncio
import time

from anytime.serving.looplag import LoopLag


def test_the_worst_lag_in_the_window_counts_and_is_forgotten_after_it():
    lag = LoopLag(window_s=2.0)
    lag.observe(0.030, now=10.0)
    lag.observe(0.004, now=10.5)
    lag.observe(0.0001, now=11.0)  # below the floor: no lag at all
    assert lag.recent_s(11.0) == 0.030
    assert lag.recent_s(12.2) == 0.004  # the 30 ms lag is older than the window
    assert lag.recent_s(13.0) == 0.0


def test_a_blocked_loop_shows_up_in_the_heartbeat():
    async def main():
        lag = LoopLag(interval_s=0.005)
        lag.start()
        await asyncio.sleep(0.02)
        time.sleep(0.08)  # blocks the loop, as a burst of requests does
        await asyncio.sleep(0.02)
        seen = lag.recent_s()
        await lag.stop()
        return seen
    assert asyncio.run(main()) >= 0.05
