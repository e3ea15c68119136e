"""Trials as Ray tasks: bounded retries for exceptions and dead workers, then a failed result; Ray stopped after."""

from __future__ import annotations

import sys

from anytime.search.ray_runner import RayRunner


def test_retries_then_a_failed_result_and_nothing_left_running(tmp_path, no_ray_left):
    def task(kind: str, marker: str) -> dict:
        import os
        from pathlib import Path

        tries = sorted(Path(marker).parent.glob(Path(marker).name + ".*"))
        Path(f"{marker}.{len(tries)}").touch()
        if kind == "flaky" and not tries:
            raise RuntimeError("the first try fails")
        if kind == "crash" and not tries:
            os._exit(1)  # the worker process dies: a system failure, retried too
        if kind == "bad":
            raise ValueError("every try fails")
        return {"status": "ok", "reward": float(len(tries))}

    with RayRunner(workers=2, max_retries=1, task=task) as runner:
        for kind in ("ok", "flaky", "crash", "bad"):
            runner.submit(kind, kind, str(tmp_path / kind))
        results = dict(runner.wait() for _ in range(4))
        assert runner.in_flight == 0
    assert results["ok"] == {"status": "ok", "reward": 0.0}
    assert results["flaky"] == {"status": "ok", "reward": 1.0}
    assert results["crash"] == {"status": "ok", "reward": 1.0}
    assert results["bad"]["status"] == "failed" and results["bad"]["reward"] is None
    assert "ValueError: every try fails" in results["bad"]["error"] and "2 tries" in results["bad"]["error"]
    assert len(list(tmp_path.glob("bad.*"))) == 2  # max_retries=1: two tries, no more
    assert "ray" in sys.modules  # the search imported it; other commands never do (test_search_cli)
