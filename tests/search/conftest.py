"""Helpers for the search tests: which Ray processes and Ray session directories a test left behind."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from anytime.search.reaper import ray_processes


def ray_state() -> tuple[set[int], set[Path]]:
    """The Ray processes alive and the local searches' Ray directories (``anytime-ray-*`` in the temp dir)."""
    return ray_processes(), set(Path(tempfile.gettempdir()).glob("anytime-ray-*"))


def wait_for_no_new_ray(before: tuple[set[int], set[Path]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pids, dirs = ray_state()
        left, kept = pids - before[0], dirs - before[1]
        if not (left or kept) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, f"Ray processes left running: {sorted(left)}"
    assert not kept, f"Ray directories left behind: {sorted(map(str, kept))}"


@pytest.fixture(scope="session")
def ray_watch():
    """``ray_watch.pids()`` and ``ray_watch.wait_for_no_new(before)`` for tests that start Ray themselves."""
    class Watch:
        pids = staticmethod(ray_state)
        wait_for_no_new = staticmethod(wait_for_no_new_ray)

    return Watch


@pytest.fixture
def no_ray_left():
    """Fails the test if it leaves a Ray process or a Ray directory that was not there before it."""
    before = ray_state()
    yield before
    wait_for_no_new_ray(before)
