"""A realistic image mix for serving benchmarks: the benchmark's val images as users would send them.

Users send ordinary photos, JPEG and PNG of 300-4000 px, not the benchmark's 224-288 px PNGs, and preparing such
an image costs the gateway from under 1 ms to tens of ms (``anytime.serving.imagecost``). No photos ship with the
project, so the mix is made from the val split:

- each image scaled so its long side is drawn from [``min_side``, ``max_side``] (bicubic), with a little sensor
  noise, since an upscaled drawing is smoother than any photo and would compress (and decode) unrealistically
  cheaply;
- half of them encoded as JPEG at quality 85-95, half as PNG (alternating, in a seeded order);
- plus the photos that pinned dependencies already ship (``shipped_photos``), which have no annotations.

It is a COCO-format dataset (``DIR/val/`` and ``DIR/annotations/instances_val.json``, boxes scaled with the
images), so ``anytime loadgen --data DIR`` streams it as it streams the benchmark. Deterministic for a seed and a
Pillow version. AP is reported on the val split itself; this mix is for what images cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from anytime.data.coco import find_split
from anytime.imaging import decode

NOISE_SIGMA = 3.0  # grey levels; a camera's noise at base ISO is about this
DEFAULT_OUT = Path("data/photos")


def shipped_photos() -> list[Path]:
    """Photos inside installed, pinned packages (no download): matplotlib's sample data."""
    try:
        import matplotlib
    except ImportError:
        return []
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [path] if path.is_file() else []


# Images in the mix: the serving benchmarks send at least 300 distinct images per row (benchmarks/peers.py).
PHOTO_COUNT = 400


def build(data_dir, out=DEFAULT_OUT, count: int = PHOTO_COUNT, min_side: int = 300, max_side: int = 1000, seed: int = 0,
          progress: bool = False) -> Path:
    """Write the mix of ``count`` val images (plus the shipped photos) to ``out``; returns ``out``."""
    from tqdm import tqdm

    image_dir, ann_file = find_split(data_dir, "val")
    data = json.loads(Path(ann_file).read_text())
    rng = np.random.default_rng(seed)
    chosen = [data["images"][i] for i in sorted(rng.permutation(len(data["images"]))[:count])]
    out = Path(out)
    (out / "val").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations, scales = [], [], {}
    for k, info in enumerate(tqdm(chosen, desc="photo mix", disable=not progress, dynamic_ncols=True)):
        image = decode((Path(image_dir) / info["file_name"]).read_bytes(), max_pixels=10**9)
        side = int(rng.integers(min_side, max_side + 1))
        factor = side / max(image.size)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        big = np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        big = np.clip(big + rng.normal(0, NOISE_SIGMA, big.shape), 0, 255).astype(np.uint8)
        stem = Path(info["file_name"]).stem
        if k % 2 == 0:
            name = f"{stem}.jpg"
            Image.fromarray(big).save(out / "val" / name, "JPEG", quality=int(rng.integers(85, 96)))
        else:
            name = f"{stem}.png"
            Image.fromarray(big).save(out / "val" / name, "PNG")
        images.append({**info, "file_name": name, "width": size[0], "height": size[1]})
        scales[info["id"]] = (size[0] / info["width"], size[1] / info["height"])
    for ann in data["annotations"]:
        if ann["image_id"] in scales:
            sx, sy = scales[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            annotations.append({**ann, "bbox": [x * sx, y * sy, w * sx, h * sy], "area": w * sx * h * sy,
                                "segmentation": []})
    next_id = max((i["id"] for i in data["images"]), default=0) + 1
    for path in shipped_photos():
        with Image.open(path) as photo:
            width, height = photo.size
        (out / "val" / path.name).write_bytes(path.read_bytes())
        images.append({"id": next_id, "file_name": path.name, "width": width, "height": height})
        next_id += 1
    result = {**{k: v for k, v in data.items() if k not in ("images", "annotations")},
              "images": images, "annotations": annotations}
    (out / "annotations" / "instances_val.json").write_text(json.dumps(result))
    return out


def ensure(data_dir, out=DEFAULT_OUT, **kwargs) -> Path:
    """The mix at ``out``, built from ``data_dir`` first if it is not there or holds fewer images than asked for
    (a mix made when the default was smaller)."""
    out = Path(out)
    ann = out / "annotations" / "instances_val.json"
    count = kwargs.get("count", PHOTO_COUNT)
    if not ann.is_file() or len(json.loads(ann.read_text())["images"]) < count:
        build(data_dir, out, **kwargs)
    return out


def add_set_arguments(parser) -> None:
    """``--data``, ``--photos`` and ``--sets``: which image sets a serving benchmark reports (both, by default:
    every serving benchmark reports the photo mix and the benchmark's own images)."""
    parser.add_argument("--data", type=Path, default=Path("data/synth"), help="the benchmark (default: %(default)s)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_OUT, help="the photo mix (default: %(default)s)")
    parser.add_argument("--sets", default="photos,bench", help="image sets to run (default: %(default)s)")


def set_sources(args) -> dict[str, Path]:
    """Set name -> COCO-format directory for ``args.sets`` (``add_set_arguments``), generating what is missing."""
    from anytime.data.synth import ensure_default

    ensure_default(args.data)
    names = [n for n in args.sets.split(",") if n]
    unknown = set(names) - {"photos", "bench"}
    if unknown:
        raise ValueError(f"unknown image sets {sorted(unknown)}: choose from photos, bench")
    return {n: ensure(args.data, args.photos) if n == "photos" else Path(args.data) for n in names}
