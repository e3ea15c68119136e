"""MetricWriter: updates from many threads reach the metric exactly, from one thread, in the tracked order.

The metrics here are counters of our own with Triton's ``increment`` method; that Triton survives the writer where
it dies of direct updates from two threads was shown on a real server (``anytime.serving.backend_metrics``), and
the progressive model's tests run it inside Triton."""

import threading
import time

import pytest

from anytime.serving.backend_metrics import MetricWriter


class Counter:
    def __init__(self, name, log):
        self.name, self.log, self.value = name, log, 0.0

    def increment(self, value):
        self.log.append((self.name, threading.get_ident()))
        self.value += value


def settle(metrics, expected, timeout=5.0):
    end = time.monotonic() + timeout
    while [m.value for m in metrics] != expected and time.monotonic() < end:
        time.sleep(0.005)
    return [m.value for m in metrics]


def test_updates_from_many_threads_add_up_and_are_written_by_one_thread():
    log = []
    a, b = Counter("a", log), Counter("b", log)
    writer = MetricWriter()

    def work():
        for _ in range(5000):
            writer.add(a)
            writer.add(b, 0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert settle([a, b], [20000.0, 10000.0]) == [20000.0, 10000.0]
    assert {ident for _, ident in log} == {writer._thread.ident}
    assert threading.get_ident() not in {ident for _, ident in log}
    writer.close()


def test_tracked_metrics_are_written_in_their_order_each_round():
    log = []
    first, second, untracked = Counter("first", log), Counter("second", log), Counter("untracked", log)
    writer = MetricWriter()
    writer.track(first, second)
    gate = threading.Lock()
    gate.acquire()
    blocker = Counter("blocker", log)
    blocker.increment = lambda v: gate.acquire()  # holds the writer in a round while the next one piles up
    writer.add(blocker)
    time.sleep(0.05)
    writer.add(untracked)
    writer.add(second)
    writer.add(first)
    gate.release()
    writer.close()
    assert [name for name, _ in log] == ["first", "second", "untracked"]


def test_close_writes_what_is_pending_and_later_updates_are_dropped():
    log = []
    a = Counter("a", log)
    writer = MetricWriter()
    for _ in range(100):
        writer.add(a, 2)
    writer.close()
    assert a.value == 200
    writer.add(a, 5)
    time.sleep(0.02)
    assert a.value == 200 and not writer._thread.is_alive()


def test_a_refused_update_is_counted_and_the_writer_goes_on():
    class Refusing:
        def increment(self, value):
            raise RuntimeError("Triton is shutting down")

    log = []
    a = Counter("a", log)
    writer = MetricWriter()
    writer.add(Refusing())
    writer.add(a, 3)
    assert settle([a], [3.0]) == [3.0]
    writer.close()
    assert writer.errors == 1


def test_an_interval_coalesces_the_events_of_a_moment_into_one_write():
    log = []
    a = Counter("a", log)
    writer = MetricWriter(interval_s=0.2)
    for _ in range(50):
        writer.add(a)
    assert settle([a], [50.0]) == [50.0]
    assert len(log) == 1  # fifty events, one round trip to Triton
    writer.close()


def test_close_does_not_wait_out_the_interval():
    a = Counter("a", [])
    writer = MetricWriter(interval_s=30.0)
    writer.add(a, 4)
    t0 = time.monotonic()
    writer.close()
    assert a.value == 4 and time.monotonic() - t0 < 5.0 and not writer._thread.is_alive()


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="interval_s"):
        MetricWriter(interval_s=-1.0)
