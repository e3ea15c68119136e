"""The synthetic benchmark: deterministic, valid COCO, all classes present, colour carries no class signal."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from anytime.data import synth


def _tiny(out, seed=0):
    return synth.generate(out, seed=seed, num_train=3, num_val=2, image_size=96, progress=False)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = _tiny(tmp_path / "a"), _tiny(tmp_path / "b"), _tiny(tmp_path / "c", seed=1)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert set(fa) == {"annotations/instances_train.json", "annotations/instances_val.json", "train/000000.png",
                       "train/000001.png", "train/000002.png", "val/000000.png", "val/000001.png"}
    assert fa == fb
    assert fa["train/000000.png"] != fc["train/000000.png"]


def test_valid_coco_with_boxes_inside_images(tmp_path):
    out = _tiny(tmp_path / "s")
    for split in ("train", "val"):
        ann_file = out / "annotations" / f"instances_{split}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == synth.class_names(10)
        assert coco.getAnnIds(), "no objects at all"
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["id"] > 0 and 0 < ann["area"] <= w * h
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"] and w > 1 and h > 1
        for img in coco.dataset["images"]:
            assert (out / split / img["file_name"]).is_file()
            assert 84 <= img["width"] <= 108 and 84 <= img["height"] <= 108  # 96 +- 12.5%


def _objects(n_images, size=128, num_classes=10):
    objs = []
    for i in range(n_images):
        objs += synth.render_image(np.random.default_rng([7, 0, i]), size, num_classes)[1]
    return objs


def test_every_class_present_and_counts_in_range():
    per_image = [len(synth.render_image(np.random.default_rng([3, 0, i]), 128, 10)[1]) for i in range(20)]
    assert min(per_image) >= 3 and max(per_image) <= 12
    assert {o.category for o in _objects(20)} == set(range(10))


def test_no_single_cue_names_a_class():
    pairs, n = synth.class_pairs(10)
    assert len(set(pairs)) == 10
    for k in range(n):
        assert sum(s == k for s, _ in pairs) >= 2, "a shape alone would identify a class"
        assert sum(p == k for _, p in pairs) >= 2, "a pattern alone would identify a class"


def test_colour_carries_no_class_information():
    """A nearest-class-mean classifier on the object colours must stay near chance (10% for 10 classes)."""
    objs = _objects(60)
    x = np.array([o.colours[0] + o.colours[1] for o in objs], np.float32)
    y = np.array([o.category for o in objs])
    half = len(objs) // 2
    means = np.stack([x[:half][y[:half] == k].mean(0) for k in range(10)])
    pred = np.argmin(((x[half:, None] - means[None]) ** 2).sum(-1), axis=1)
    accuracy = (pred == y[half:]).mean()
    assert accuracy < 0.17, f"colour predicts the class ({accuracy:.0%})"
    assert np.abs(x.mean(0) - 127.5).max() < 25  # colours span the whole range


def test_class_count_option_and_limits():
    assert len(set(synth.class_names(30))) == 30
    with pytest.raises(ValueError, match="num_classes"):
        synth.SynthConfig(num_classes=31).validate()


def test_ensure_default_generates_only_when_absent(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(synth, "generate", lambda d, **kw: calls.append(d))
    synth.ensure_default(tmp_path)
    assert calls == [tmp_path]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    synth.ensure_default(tmp_path)
    assert len(calls) == 1


def _run_cli(argv):
    from anytime.data.cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_a_set_and_rejects_bad_options(tmp_path, capsys):
    from anytime.cli import UserError

    out = tmp_path / "cli"
    assert _run_cli(["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--image-size", "64",
                     "--classes", "4", "--no-progress"]) == 0
    doc = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert len(doc["images"]) == 1 and len(doc["categories"]) == 4
    with pytest.raises(UserError, match="num_classes"):
        _run_cli(["data", "synth", "--out", str(out), "--classes", "99"])
