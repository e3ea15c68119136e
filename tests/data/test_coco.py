"""The COCO loader on hand-made datasets: odd category ids, crowds, image modes, and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from anytime.data.coco import CocoDetection, DatasetError, collate, find_split
from anytime.data.transforms import eval_transform

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 7, "name": "train"}]


def _crowd_rle(h, w, box):
    m = np.zeros((h, w), np.uint8, order="F")
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    rle = mask_utils.encode(m)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _write(root, images, annotations, categories=CATEGORIES, split="train"):
    """images: [(file_name, PIL image or None for a missing file)]; ids are 1.."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    records = []
    for i, (name, im) in enumerate(images, start=1):
        if im is not None:
            im.save(root / split / name)
        w, h = im.size if im is not None else (32, 32)
        records.append({"id": i, "file_name": name, "width": w, "height": h})
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    return root / split, ann_file


def _good(root):
    rgb = Image.fromarray(np.full((48, 64, 3), 100, np.uint8))
    grey = Image.fromarray(np.full((40, 40), 200, np.uint8), "L")
    rgba = Image.new("RGBA", (50, 30), (10, 20, 30, 128))
    palette = Image.new("P", (20, 20), 3)
    cmyk = Image.new("CMYK", (24, 24), (0, 255, 0, 0))
    images = [("a.png", rgb), ("b.png", grey), ("c.png", rgba), ("d.png", palette), ("e.jpg", cmyk)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0},  # degenerate
        {"id": 4, "image_id": 1, "category_id": 1, "segmentation": _crowd_rle(48, 64, (30, 20, 60, 40)),
         "bbox": [30, 20, 30, 20], "area": 600, "iscrowd": 1},
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": [-0.5, 2, 40.4, 30], "area": 1200, "iscrowd": 0},
        {"id": 6, "image_id": 3, "category_id": 1, "segmentation": _crowd_rle(30, 50, (0, 0, 10, 10)),
         "area": 100, "iscrowd": 1},  # crowd without bbox: derived from the RLE
    ]
    return _write(root, images, anns)


def test_loads_odd_ids_modes_crowds_and_empty_images(tmp_path):
    ds = CocoDetection(*_good(tmp_path))
    assert len(ds) == 5 and ds.ids == [1, 2, 3, 4, 5]
    assert ds.cat_ids == [1, 7, 90] and ds.class_names == ["person", "train", "toothbrush"]

    img, t = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 48, 64)
    assert t["labels"].tolist() == [1, 2] and t["labels"].dtype == torch.int64
    assert t["boxes"].dtype == torch.float32
    assert t["boxes"].tolist() == [[10, 5, 30, 15], [0, 0, 64, 48]]
    assert t["crowd_boxes"].tolist() == [[30, 20, 60, 40]]
    assert t["image_id"] == 1 and t["scale"] == 1.0 and t["orig_size"] == (48, 64)

    img, t = ds[1]  # greyscale; a box 0.5 px outside is clipped, not an error
    assert img.shape == (3, 40, 40) and (img == 200).all()
    assert t["boxes"].tolist() == [[0, 2, pytest.approx(39.9), 32]] and t["labels"].tolist() == [0]
    img, t = ds[2]  # RGBA
    assert img.shape == (3, 30, 50) and img[:, 0, 0].tolist() == [10, 20, 30]
    assert t["boxes"].shape == (0, 4) and t["crowd_boxes"].tolist() == [[0, 0, 10, 10]]
    for i in (3, 4):  # palette, CMYK; no annotations
        img, t = ds[i]
        assert img.shape[0] == 3 and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_transform_and_collate(tmp_path):
    ds = CocoDetection(*_good(tmp_path), transform=eval_transform(32))
    images, targets = collate([ds[i] for i in range(len(ds))])
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    assert targets[0]["scale"] == 0.5 and targets[0]["boxes"][0].tolist() == [5, 2.5, 15, 7.5]
    with pytest.raises(ValueError, match="transform"):
        collate([CocoDetection(*_good(tmp_path))[i] for i in (0, 1)])


def test_find_split_layouts(tmp_path):
    image_dir, ann_file = _good(tmp_path / "ours")
    assert find_split(tmp_path / "ours", "train") == (image_dir, ann_file)
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    assert find_split(coco, "val") == (coco / "val2017", coco / "annotations" / "instances_val2017.json")
    with pytest.raises(FileNotFoundError, match="test"):
        find_split(coco, "test")


def _one_image(root, ann, name="x.png", write=True, categories=CATEGORIES):
    im = Image.new("RGB", (32, 32))
    image_dir, ann_file = _write(root, [(name, im), ("ok.png", im)], [ann], categories)
    if not write:
        (image_dir / name).unlink()
    return image_dir, ann_file


BAD = {
    "missing image": (dict(id=11, image_id=1, category_id=1, bbox=[1, 1, 5, 5]), False, ["missing.png"]),
    "box outside": (dict(id=42, image_id=1, category_id=1, bbox=[20, 20, 15, 5]), True, ["annotation id 42", "x.png"]),
    "unknown category": (dict(id=43, image_id=1, category_id=5, bbox=[1, 1, 5, 5]), True,
                         ["annotation id 43", "category_id 5"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dataset_errors_name_the_culprit_or_skip(tmp_path, case):
    ann, write, needles = BAD[case]
    name = "missing.png" if case == "missing image" else "x.png"
    image_dir, ann_file = _one_image(tmp_path, dict(ann, iscrowd=0, area=1), name, write)
    with pytest.raises(DatasetError) as err:
        CocoDetection(image_dir, ann_file)
    for needle in needles + [str(ann_file)]:
        assert needle in str(err.value)
    with pytest.warns(UserWarning, match=needles[0]):
        ds = CocoDetection(image_dir, ann_file, skip_bad=True)
    assert ds.ids == [2] and ds.coco.getImgIds() == [2]
    assert ds[0][1]["image_id"] == 2


def test_broken_json_names_the_file(tmp_path):
    image_dir, ann_file = _one_image(tmp_path, dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 5, 5]))
    ann_file.write_text('{"images": [')
    with pytest.raises(DatasetError, match="instances_train.json.*not valid JSON"):
        CocoDetection(image_dir, ann_file)


def test_odd_coco_file_evaluates_with_crowds_ignored(tmp_path):
    """Ground truth as predictions scores AP 1.0 on the odd file; a detection on a crowd region costs nothing."""
    from anytime.eval.coco_eval import coco_metrics

    ds = CocoDetection(*_good(tmp_path))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
               for a in ds.coco.dataset["annotations"] if not a["iscrowd"]]
    assert coco_metrics(ds.coco, results, ds.ids)["AP"] == pytest.approx(1.0)
    on_crowd = {"image_id": 1, "category_id": 1, "bbox": [32, 22, 25, 15], "score": 0.9}
    assert coco_metrics(ds.coco, results + [on_crowd], ds.ids)["AP"] == pytest.approx(1.0)
    stray = {"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.95}
    assert coco_metrics(ds.coco, results + [stray], ds.ids)["AP"] < 1.0
