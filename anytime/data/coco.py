"""Any COCO-format detection dataset on disk, loaded through pycocotools.

Why the checking: a bad annotation file otherwise fails deep inside a DataLoader worker, or silently trains on
wrong boxes. Everything that can be checked without decoding images is checked once, at construction, and each
error names the JSON file, the annotation id and the image file. ``skip_bad=True`` turns those errors into one
warning and leaves the offending images out. Degenerate boxes (w or h <= 1 px) are dropped without a word: real
COCO has a few and they are not mistakes worth stopping for.

Images come back as ``uint8`` RGB tensors; normalisation happens inside the model.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from anytime.imaging import decoded, open_image, to_rgb  # noqa: F401  (to_rgb re-exported: loaders and tools convert with it)

BOX_TOLERANCE = 1.0  # px a box may stick out of its image before it counts as an error (then it is clipped)
MIN_BOX_SIDE = 1.0  # boxes with w or h <= this are dropped silently
_MAX_LISTED = 10  # problems spelled out in one error or warning
_MAX_PIXELS = 400_000_000  # a dataset's own images are trusted further than a request's


class DatasetError(ValueError):
    """A dataset that cannot be loaded as it is; the message names the file and, where known, the annotation id."""


def find_split(data_dir, split: str) -> tuple[Path, Path]:
    """(image_dir, ann_file) of ``split``: ``DIR/{split}/`` + ``DIR/annotations/instances_{split}.json``, or
    COCO's own ``DIR/{split}2017/`` + ``DIR/annotations/instances_{split}2017.json``."""
    d = Path(data_dir)
    layouts = [(d / split, d / "annotations" / f"instances_{split}.json"),
               (d / f"{split}2017", d / "annotations" / f"instances_{split}2017.json")]
    for image_dir, ann_file in layouts:
        if ann_file.is_file():
            if not image_dir.is_dir():
                raise FileNotFoundError(f"{ann_file} exists but its image folder {image_dir} does not")
            return image_dir, ann_file
    tried = " or ".join(f"{a} with {i}/" for i, a in layouts)
    raise FileNotFoundError(f"no '{split}' split under {d}: expected {tried}")


class CocoDetection(torch.utils.data.Dataset):
    """Item ``i``: (uint8 image [3, H, W], target) for image ``ids[i]``.

    target: ``boxes`` float32 [N, 4] xyxy in the returned image's pixels, ``labels`` int64 [N] in 0..K-1 (index
    into ``cat_ids``), ``crowd_boxes`` float32 [M, 4] xyxy (iscrowd regions, never training targets),
    ``image_id`` int, ``scale`` float (returned pixels per original pixel: original = box / scale),
    ``orig_size`` (h, w). The transform (``transforms.train_transform`` / ``eval_transform``) makes images
    S x S; without one they keep their own size and ``scale`` is 1.
    """

    def __init__(self, image_dir, ann_file, transform=None, skip_bad: bool = False):
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.transform, self.skip_bad = transform, skip_bad
        data = _load_json(self.ann_file)
        categories = {c["id"]: c for c in data["categories"]}
        self.cat_ids: list[int] = sorted(categories)
        self.class_names: list[str] = [str(categories[c].get("name", c)) for c in self.cat_ids]
        label_of = {c: k for k, c in enumerate(self.cat_ids)}

        images = {img["id"]: img for img in data["images"]}
        problems: dict[int, list[str]] = {}  # image id -> what is wrong with it
        for img_id, img in images.items():
            if not (self.image_dir / img["file_name"]).is_file():
                problems.setdefault(img_id, []).append(f"image file {self.image_dir / img['file_name']} is missing")

        per_image: dict[int, tuple[list, list, list]] = {i: ([], [], []) for i in images}
        orphans = []
        for ann in data["annotations"]:
            img = images.get(ann.get("image_id"))
            if img is None:
                orphans.append(f"annotation id {ann.get('id')}: unknown image_id {ann.get('image_id')}")
                continue
            where = f"annotation id {ann.get('id')} (image id {img['id']}, {img['file_name']})"
            if ann.get("category_id") not in label_of:
                problems.setdefault(img["id"], []).append(
                    f"{where}: unknown category_id {ann.get('category_id')} (known: {_short(self.cat_ids)})")
                continue
            box, err = _xyxy(ann, img)
            if err:
                problems.setdefault(img["id"], []).append(f"{where}: {err}")
                continue
            if box is None:  # degenerate
                continue
            boxes, labels, crowd = per_image[img["id"]]
            if ann.get("iscrowd", 0):
                crowd.append(box)
            else:
                boxes.append(box)
                labels.append(label_of[ann["category_id"]])

        if orphans:
            problems.setdefault(None, []).extend(orphans)  # no image to skip: the annotations are just ignored
        if problems:
            self._report(problems)
        skipped = {i for i in problems if i is not None}
        self.ids: list[int] = sorted(i for i in images if i not in skipped)
        self._targets = {i: _as_arrays(*per_image[i]) for i in self.ids}
        self.coco = _make_coco(data, skipped)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _report(self, problems: dict) -> None:
        lines = [p for ps in problems.values() for p in ps]
        listed = "; ".join(lines[:_MAX_LISTED])
        if len(lines) > _MAX_LISTED:
            listed += f"; and {len(lines) - _MAX_LISTED} more"
        if not self.skip_bad:
            raise DatasetError(f"{self.ann_file}: {listed} (pass skip_bad to skip these images)")
        n_images = len([i for i in problems if i is not None])
        warnings.warn(f"{self.ann_file}: skipping {n_images} image(s) and their annotations: {listed}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.item(i, self.transform)

    def item(self, i: int, transform):
        """Item ``i`` through ``transform`` instead of the dataset's own (multi-resolution training draws a size
        per batch: ``anytime.train.loop``)."""
        img_id = self.ids[i]
        info = self.coco.imgs[img_id]
        path = self.image_dir / info["file_name"]
        try:
            # Opened from its bytes with only the header read: the eval transform decodes it with the gateway's
            # own function (``anytime.imaging.letterbox``: a large JPEG is decoded at a reduced size), the train
            # transform whole.
            image = open_image(path.read_bytes(), max_pixels=_MAX_PIXELS)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read image (id {img_id}): {e}") from e
        if image.size != (info["width"], info["height"]):
            raise DatasetError(f"{path}: image is {image.size[0]}x{image.size[1]} but {self.ann_file} says "
                               f"{info['width']}x{info['height']} (id {img_id})")
        boxes, labels, crowd = self._targets[img_id]
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                  "crowd_boxes": torch.from_numpy(crowd), "image_id": int(img_id), "scale": 1.0,
                  "orig_size": (image.height, image.width)}
        if transform is not None:
            return transform(image, target)
        return torch.from_numpy(np.array(decoded(image))).permute(2, 0, 1).contiguous(), target


def collate(batch) -> tuple[torch.Tensor, list[dict]]:
    """Stack equal-sized images into uint8 [B, 3, S, S]; targets stay a list (their box counts differ)."""
    images, targets = zip(*batch)
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError("collate needs equal-sized images; give the dataset a transform "
                         "(anytime.data.transforms.train_transform / eval_transform)")
    return torch.stack(images), list(targets)


# -- helpers -------------------------------------------------------------------------------------------------

def _load_json(ann_file: Path) -> dict:
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_file}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: expected a JSON object with images / annotations / categories")
    data.setdefault("annotations", [])  # test-set style files have none
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: '{key}' is missing or not a list")
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise DatasetError(f"{ann_file}: category without an id: {c!r}")
    for img in data["images"]:
        if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "width", "height")):
            raise DatasetError(f"{ann_file}: image entry needs id, file_name, width, height: {_clip(img)}")
    for key in ("categories", "images"):
        ids = [x["id"] for x in data[key]]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{ann_file}: duplicate {key[:-1]} ids")
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise DatasetError(f"{ann_file}: annotation is not an object: {_clip(ann)}")
    return data


def _xyxy(ann: dict, img: dict) -> tuple[list[float] | None, str | None]:
    """(box clipped to the image, None), (None, None) if degenerate, or (None, error)."""
    w_img, h_img = float(img["width"]), float(img["height"])
    bbox = ann.get("bbox")
    if bbox is None and ann.get("segmentation"):
        try:
            bbox = _bbox_from_segmentation(ann["segmentation"], int(h_img), int(w_img))
        except Exception as e:  # pycocotools raises a variety of types on malformed input
            return None, f"bad segmentation ({e})"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, f"bbox must be [x, y, w, h] numbers, got {bbox!r}"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, f"bbox has non-finite values {bbox!r}"
    if w <= MIN_BOX_SIDE or h <= MIN_BOX_SIDE:
        return None, None
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > w_img + t or y + h > h_img + t:
        return None, f"bbox {bbox} lies outside its {img['width']}x{img['height']} image"
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, w_img), min(y + h, h_img)
    if x2 - x1 <= MIN_BOX_SIDE or y2 - y1 <= MIN_BOX_SIDE:
        return None, None
    return [x1, y1, x2, y2], None


def _bbox_from_segmentation(seg, h: int, w: int) -> list[float]:
    """[x, y, w, h] of a polygon list, an uncompressed RLE or a compressed RLE."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return [float(v) for v in mask_utils.toBbox(rle)]


def _as_arrays(boxes: list, labels: list, crowd: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(crowd, np.float32).reshape(-1, 4))


def _make_coco(data: dict, skipped: set) -> COCO:
    """A pycocotools COCO over the data minus skipped images and annotations of unknown images."""
    images = [im for im in data["images"] if im["id"] not in skipped]
    by_id = {im["id"]: im for im in images}
    annotations = []
    for a in data["annotations"]:
        img = by_id.get(a.get("image_id"))
        if img is None:
            continue
        if "bbox" not in a and a.get("segmentation"):  # COCOeval needs a box: derive it as training does
            a = dict(a, bbox=_bbox_from_segmentation(a["segmentation"], img["height"], img["width"]))
        annotations.append(a)
    coco = COCO()
    coco.dataset = dict(data, images=images, annotations=annotations)
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def _short(ids: list) -> str:
    return ", ".join(map(str, ids[:12])) + (", ..." if len(ids) > 12 else "")


def _clip(obj) -> str:
    s = repr(obj)
    return s if len(s) <= 120 else s[:117] + "..."
