"""The README's main job, ``anytime demo``, end to end on the embedded default model: a real export, a real Triton
and gateway, budgets chosen from what the stack measures, the table, the sentence and the plots."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_end_to_end_on_the_default_model(tmp_path):
    from anytime.data.synth import generate

    data = generate(tmp_path / "data", num_train=2, num_val=24, image_size=64, progress=False)
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "anytime", "demo", "--data", str(data), "--repository",
           str(tmp_path / "repo"), "--out", str(out), "--requests", "24", "--probe-requests", "16"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "loadgen.json").read_text())
    plan = report["plan"]
    # three promised budgets from the measured p99s of three options (the cheapest, the deepest exit at the model's
    # size, the most expensive), the tighter ones below them, and the overload row
    assert list(plan["p99_ms"]) == ["128/2", "256/4", "384/4"]
    assert plan["budgets"] == sorted(set(plan["budgets"])) and len(plan["budgets"]) == 3 and plan["capacity"] > 0 and plan["overload_rate"] > plan["rate"]
    assert all(t < plan["budgets"][-1] for t in plan["tight_budgets"])
    settings = report["settings"]
    expected = plan["tight_budgets"] + plan["budgets"] + plan["budgets"][:1]
    assert [s["budget_ms"] for s in settings] == [float(b) for b in expected]
    assert [s["rate"] for s in settings] == [plan["rate"]] * (len(expected) - 1) + [plan["overload_rate"]]
    assert all(s["requests"] == 24 and sum(s["status"].values()) == 24 for s in settings)
    assert all((out / name).stat().st_size > 10_000 for name in ("ap_vs_budget.png", "exit_histogram.png"))
    assert "budgets met:" in done.stdout and "refused at once" in done.stdout
    # exit 1, the deepest exit and the cheapest option served straight from Triton, on the same half-capacity traces
    peers = report["peers"]
    half = [s for s in settings if s["rate"] == plan["rate"]]
    ways = ["exit 1 direct", "exit 4 direct", "option 128/2 direct"]
    assert sorted({p["way"] for p in peers}) == ways
    for way in ways:
        mine = [p for p in peers if p["way"] == way]
        assert [(p["budget_ms"], p["rate"]) for p in mine] == [(s["budget_ms"], s["rate"]) for s in half]
        assert all(sum(p["status"].values()) == 24 for p in mine)
    assert "Where a peer did better than the gateway" in done.stdout or "no budget met more" in done.stdout
    assert "everything it started has stopped" in done.stdout
    assert (tmp_path / "repo" / "manifest.json").exists() and (tmp_path / "runs" / "logs").is_dir()
