"""``anytime loadgen`` against a real gateway and Triton on loopback, on a tiny synthetic COCO dataset."""

from __future__ import annotations

import asyncio
import json

import pytest

from anytime.cli import main
from anytime.clients.loadgen import SettingResult, evaluate_results, loadgen, open_dataset, parse_budget, run_setting

N_VAL = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from anytime.data.synth import generate

    return generate(tmp_path_factory.mktemp("loadgen") / "data", num_train=2, num_val=N_VAL, image_size=128,
                    progress=False)


@pytest.fixture(scope="module")
def stack(tiny_stack):
    return tiny_stack


def test_generous_budgets_answer_everything(stack, data, tmp_path):
    out = tmp_path / "run"
    report = loadgen(stack.address, data, budgets_ms=[1000, 2000], rates=[10], out=out, progress=False)
    assert len(report["settings"]) == 2
    for s in report["settings"]:
        assert s["requests"] == N_VAL and s["status"] == {"OK": N_VAL} and s["budget_met_rate"] == 1.0
        assert 0.0 <= s["AP"] <= 1.0 and 0.0 <= s["AP50"] <= 1.0
        assert sum(s["exits"].values()) == N_VAL and s["exits"].get("3") == N_VAL  # ample time: the deepest exit
        (used,) = s["ap_per_exit"]  # the answers name their input size: "SIZE/3"
        assert used.endswith("/3") and s["ap_per_exit"][used]["images"] == N_VAL and s["options"] == {used: N_VAL}
        lat = s["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] < 2000
    # same seed, same images, same deepest exit: the two budgets score the same
    assert report["settings"][0]["AP"] == report["settings"][1]["AP"]
    saved = json.loads((out / "loadgen.json").read_text())
    assert [s["budget_ms"] for s in saved["settings"]] == [1000, 2000]
    for name in ("ap_vs_budget.png", "exit_histogram.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_impossible_budget_fails_everything(stack, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["loadgen", "--server", stack.address, "--data", str(data), "--budgets-ms", "0.5", "--rates", "50",
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (s,) = report["settings"]
    assert s["requests"] == N_VAL and s["status"] == {"DEADLINE_EXCEEDED": N_VAL}
    assert s["budget_met_rate"] == 0.0 and s["AP"] == 0.0 and s["exits"] == {} and s["latency_ms"]["p50"] is None
    assert (out / "loadgen.json").exists() and (out / "exit_histogram.png").exists()
    assert not (out / "ap_vs_budget.png").exists()  # one budget: nothing to plot against


def test_run_setting_with_a_budget_distribution(stack, data):
    dataset = open_dataset(data)
    result = asyncio.run(run_setting(stack.address, dataset, "uniform:500:1500", rate=20, n=5, seed=3, progress=False))
    assert len({r.image_id for r in result.records}) == 5
    assert all(500 <= r.budget_ms <= 1500 and r.status == "OK" and r.budget_met for r in result.records)
    assert [r.arrival_s for r in result.records] == sorted(r.arrival_s for r in result.records)
    summary = evaluate_results(result, dataset.coco)
    assert summary["budget"] == "uniform:500:1500" and summary["budget_ms"] is None and summary["ok"] == 5


def test_unreachable_gateway_is_a_user_error(data, tmp_path, capsys):
    from anytime.serving.triton import free_ports

    (port,) = free_ports(1)
    code = main(["loadgen", "--server", f"127.0.0.1:{port}", "--data", str(data), "--budgets-ms", "100",
                 "--out", str(tmp_path)])
    assert code == 2 and "did not answer: " in capsys.readouterr().err


def test_evaluate_results_scores_perfect_answers_as_one(data):
    """The AP bookkeeping itself: ground-truth boxes as answers score 1; an unanswered half scores less."""
    from anytime.clients.loadgen import RequestRecord

    dataset = open_dataset(data)
    coco = dataset.coco
    records = []
    for k, image_id in enumerate(dataset.ids):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        records.append(RequestRecord(image_id, 50.0, 0.0, 0.0, "OK", latency_ms=5.0, exit=1 + k % 2, budget_met=True,
                                     server_ms={"queue": 1.0, "inference": 3.0, "total": 4.0},
                                     detections=[{"image_id": image_id, "category_id": a["category_id"],
                                                  "bbox": a["bbox"], "score": 1.0} for a in anns]))
    full = evaluate_results(SettingResult("x", parse_budget(50), 1.0, 0, records, 1.0), coco)
    assert full["AP"] == pytest.approx(1.0) and full["ap_per_exit"]["1"]["AP"] == pytest.approx(1.0)
    for r in records[::2]:
        r.status, r.exit, r.budget_met, r.detections = "DEADLINE_EXCEEDED", None, False, []
    half = evaluate_results(SettingResult("x", parse_budget(50), 1.0, 0, records, 1.0), coco)
    assert half["budget_met_rate"] == 0.5 and half["status"] == {"DEADLINE_EXCEEDED": 6, "OK": 6}
    assert half["AP"] < 0.7 and half["ap_per_exit"]["2"]["AP"] == pytest.approx(1.0)


def test_late_answers_are_misses_on_the_clients_clock_and_earn_no_ap_at_budget(data):
    """The gateway said budget_met, but the answer reached the client after the budget: a miss."""
    from anytime.clients.loadgen import RequestRecord

    dataset = open_dataset(data)
    coco = dataset.coco
    records = []
    for image_id in dataset.ids:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        records.append(RequestRecord(image_id, 50.0, 0.0, 0.0, "OK", latency_ms=55.0, exit=1, budget_met=False,
                                     server_budget_met=True,
                                     detections=[{"image_id": image_id, "category_id": a["category_id"],
                                                  "bbox": a["bbox"], "score": 1.0} for a in anns]))
    s = evaluate_results(SettingResult("x", parse_budget(50), 1.0, 0, records, 1.0), coco)
    assert s["budget_met_rate"] == 0.0 and s["server_budget_met_rate"] == 1.0 and s["late"] == N_VAL
    assert s["AP"] == 0.0 and s["AP_all"] == pytest.approx(1.0)


def test_met_is_measured_by_the_client(stack, data):
    """Every answer's budget_met is the client's own latency against the budget."""
    dataset = open_dataset(data)
    result = asyncio.run(run_setting(stack.address, dataset, 1000, rate=20, n=6, seed=1, progress=False))
    assert all(r.budget_met == (r.latency_ms <= r.budget_ms) for r in result.records)
    fixed = asyncio.run(run_setting(stack.address, dataset, 1000, rate=20, n=6, seed=1, progress=False, exits=(1, 1)))
    assert {r.exit for r in fixed.records} == {1}  # the fixed-exit baseline through the same gateway


@pytest.mark.parametrize("args, message", [
    (["--rates", "0"], "--rates must all be > 0"),
    (["--budget-dist", "normal:1:2"], "unknown budget distribution"),
    (["--budget-dist", "uniform:50:10"], "bad budget"),
    (["--requests", "999"], "between 1 and the split's 12 images"),
])
def test_bad_settings_are_user_errors(data, tmp_path, capsys, args, message):
    assert main(["loadgen", "--data", str(data), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
