"""Helpers for the search tests: which Ray processes are alive."""

from __future__ import annotations

import time

import pytest

from anytime.search.reaper import ray_processes as ray_pids


def wait_for_no_new_ray(before: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := ray_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.fixture(scope="session")
def ray_watch():
    """``ray_watch.pids()`` and ``ray_watch.wait_for_no_new(before)`` for tests that start Ray themselves."""
    class Watch:
        pids = staticmethod(ray_pids)
        wait_for_no_new = staticmethod(wait_for_no_new_ray)

    return Watch


@pytest.fixture
def no_ray_left():
    """Fails the test if it leaves a Ray process running that was not there before it."""
    before = ray_pids()
    yield before
    wait_for_no_new_ray(before)
