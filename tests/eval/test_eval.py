"""Evaluation: the COCOeval wrapper scores ground truth as perfect; a trained checkpoint evaluates end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anytime.eval.coco_eval import METRICS, coco_metrics, evaluate, format_table

TINY_MODEL = {"backbone": "resnet10", "backbone_width": 0.25, "width": 16, "repeats": 2, "image_size": 128,
              "score_thresh": 0.001}  # an untrained model scores ~0.01: keep its detections so they get scored


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tiny_synth_dir) -> Path:
    return tiny_synth_dir


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory) -> Path:
    """A tiny model trained for a few iterations."""
    from anytime.train.config import RunConfig
    from anytime.train.loop import train

    out = tmp_path_factory.mktemp("run")
    run = RunConfig.from_dict({"model": TINY_MODEL, "train": dict(
        data_dir=str(data_dir), out_dir=str(out), batch_size=4, max_iters=4, lr=0.01, warmup_iters=1)})
    return Path(train(run, progress=False)["checkpoint"])


def val_set(data_dir: Path, image_size: int = 128):
    from anytime.data.coco import CocoDetection, find_split
    from anytime.data.transforms import eval_transform

    return CocoDetection(*find_split(data_dir, "val"), transform=eval_transform(image_size))


def test_ground_truth_as_predictions_is_perfect(data_dir):
    ds = val_set(data_dir)
    anns = ds.coco.dataset["annotations"]
    assert anns
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in anns if not a.get("iscrowd")]
    metrics = coco_metrics(ds.coco, results, ds.ids)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert all(v is None or v == pytest.approx(1.0) for v in metrics.values())  # None: no GT of that size
    assert coco_metrics(ds.coco, [], ds.ids) == {m: 0.0 for m in METRICS}  # no detections at all


def test_boxes_map_back_to_original_pixels(data_dir):
    """Detections equal to the transformed ground truth score AP 1 after evaluate()'s mapping."""
    ds = val_set(data_dir)

    class Oracle(torch.nn.Module):  # a "model" whose every exit returns the ground truth of the batch
        num_exits = 2

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.queue = [ds[i][1] for i in range(len(ds))]

        def detect(self, images, exits):
            ts, self.queue = self.queue[: len(images)], self.queue[len(images):]
            truth = [dict(boxes=t["boxes"], scores=torch.ones(len(t["boxes"])), labels=t["labels"]) for t in ts]
            none = [dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))] * len(ts)
            return {1: none, 2: truth}

    report = evaluate(Oracle(), ds, batch_size=3, progress=False)
    by_exit = {r["exit"]: r for r in report["exits"]}
    assert by_exit[1]["AP"] == 0.0 and by_exit[1]["detections"] == 0
    assert by_exit[2]["AP"] > 0.95  # boxes are rescaled to original pixels (eval resize is not exactly invertible)


def test_evaluate_trained_checkpoint(checkpoint, data_dir, tmp_path):
    from anytime.train.checkpoint import load_model

    model, meta = load_model(checkpoint)
    report = evaluate(model, val_set(data_dir), batch_size=2, progress=False, out_dir=tmp_path)
    assert [r["exit"] for r in report["exits"]] == [1, 2] and report["num_images"] == 4
    for row in report["exits"]:
        assert set(METRICS) <= set(row) and row["detections"] > 0
        results = json.loads((tmp_path / f"results_exit{row['exit']}.json").read_text())
        assert len(results) == row["detections"]
        assert {"image_id", "category_id", "bbox", "score"} <= set(results[0])
        assert {r["category_id"] for r in results} <= set(meta["cat_ids"])
    png = tmp_path / "ap_per_exit.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AP50" in format_table(report)


def test_cli_json(checkpoint, data_dir, tmp_path, capsys):
    from anytime.cli import main
    from anytime.train.checkpoint import load_model, save_inference_checkpoint

    # The fp16 inference checkpoint evaluates like the full one.
    model, meta = load_model(checkpoint)
    small = save_inference_checkpoint(model, tmp_path / "small.pt", meta)
    assert main(["eval", "--checkpoint", str(small), "--data", str(data_dir), "--exits", "2", "--json",
                 "--out", str(tmp_path / "ev"), "--batch-size", "4"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout is only the JSON
    assert [r["exit"] for r in out["exits"]] == [2]
    assert set(METRICS) <= set(out["exits"][0])
    assert (tmp_path / "ev" / "results_exit2.json").exists() and (tmp_path / "ev" / "ap_per_exit.png").exists()

    assert main(["eval", "--checkpoint", str(small), "--data", str(data_dir), "--exits", "5"]) == 2
    assert "exits 1..2" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(data_dir)]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(small), "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_missing_default_model_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import anytime.train.checkpoint as ckpt
    from anytime.cli import main

    monkeypatch.setattr(ckpt, "DEFAULT_MODEL", tmp_path / "assets" / "default_model.pt")
    assert main(["eval", "--data", str(tmp_path)]) == 2
    assert "default model" in capsys.readouterr().err


def test_one_model_per_depth_joins_the_last_exits_of_each_depth(tmp_path):
    """The paper's Figure 8a point is a model's last exit at its depth: seeds of one depth are averaged, and a
    pyramid with a single depth forms no line."""
    from anytime.eval.scaling import per_depth, plot_scaling

    def model(pyramid, aps):
        return {"label": pyramid, "pyramid": pyramid, "repeats": len(aps),
                "exits": [{"exit": i + 1, "AP": ap, "gmacs": 0.2 + 0.1 * i} for i, ap in enumerate(aps)]}

    models = [model("nasfpn", [0.2, 0.3]), model("nasfpn", [0.22]), model("nasfpn", [0.2, 0.28]),
              model("fpn-cells", [0.18, 0.2])]
    assert per_depth(models) == {"nasfpn": [{"repeats": 1, "AP": 0.22, "gmacs": 0.2, "runs": 1},
                                            {"repeats": 2, "AP": 0.29, "gmacs": 0.3, "runs": 2}]}
    assert plot_scaling(models, tmp_path / "f.png").stat().st_size > 10_000


def test_scaling_plots_ap_against_pyramids_and_gmacs(checkpoint, data_dir, tmp_path, capsys):
    """anytime scaling takes a checkpoint (evaluated here) and an eval report alike; GMACs grow with the exit. A
    report carries its model's config, so it plots after its checkpoint is gone; an older report without it is
    read through its checkpoint."""
    from anytime.cli import main

    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir), "--json",
                 "--out", str(tmp_path / "ev")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == str(checkpoint) and report["model"]["repeats"] == 2
    orphan, old = tmp_path / "orphan.json", tmp_path / "old.json"
    orphan.write_text(json.dumps({**report, "checkpoint": str(tmp_path / "gone.pt")}))
    old.write_text(json.dumps({k: v for k, v in report.items() if k != "model"}))
    figure = tmp_path / "fig8a.png"
    assert main(["scaling", str(checkpoint), str(orphan), str(old), "--labels", "a,b,c", "--data", str(data_dir),
                 "--out", str(figure), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    models = out["models"]
    assert [m["label"] for m in models] == ["a", "b", "c"] and figure.stat().st_size > 10_000
    assert out["per_depth"] == {}  # three models of one depth: no one-model-per-depth line
    a, b, c = models
    assert [e["AP"] for e in a["exits"]] == pytest.approx([e["AP"] for e in b["exits"]], abs=1e-6)
    assert [e["gmacs"] for e in a["exits"]] == [e["gmacs"] for e in b["exits"]] == [e["gmacs"] for e in c["exits"]]
    gmacs = [e["gmacs"] for e in a["exits"]]
    assert len(gmacs) == a["repeats"] == 2 and gmacs[0] < gmacs[1]
    assert main(["scaling", str(tmp_path / "none.pt")]) == 2 and "does not exist" in capsys.readouterr().err
    assert main(["scaling", str(checkpoint), "--labels", "a,b"]) == 2


def test_cli_sizes_evaluates_every_size_and_exit_in_one_run(checkpoint, data_dir, tmp_path, capsys):
    """One set of weights at several input sizes (issue 33): AP and GMACs per (size, exit); the report's own
    exits stay at the model's size, which export reads."""
    from anytime.cli import main

    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir), "--sizes", "256,128", "--json",
                 "--out", str(tmp_path / "ev"), "--batch-size", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["image_size"] for s in out["sizes"]] == [128, 256]
    small, large = out["sizes"]
    assert [e["exit"] for e in small["exits"]] == [e["exit"] for e in large["exits"]] == [1, 2]
    assert small["exits"] == [{**{k: v for k, v in e.items() if k != "detections"}, "gmacs": s["gmacs"]}
                              for e, s in zip(out["exits"], small["exits"])]  # 128 px is the model's own size
    for a, b in zip(small["exits"], large["exits"]):
        assert b["gmacs"] > 3 * a["gmacs"]  # 4x the pixels
        assert set(METRICS) <= set(b)
    assert out["model"]["image_size"] == 128  # evaluated at 256 px, the report still names the model's own size

    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir), "--sizes", "200"]) == 2
    assert "multiple of 128" in capsys.readouterr().err
