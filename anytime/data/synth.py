"""A synthetic COCO-format detection benchmark on which a deeper detector beats a shallower one.

Why it looks like this: coloured shapes on a plain background are solved by the first pyramid network, so every
exit ties and the anytime trade-off cannot be measured. Here a class is a *conjunction* of an outline shape and an
internal pattern, colour is random, and unlabelled distractors use the very same shapes, patterns and colours
(other shape x pattern pairs, cut-off fragments, hollow outlines). No single local cue names a class: the detector
must relate the pattern inside an object to the outline around it, which for the large objects lies far outside
a shallow feature's receptive field. Boxes are the visible extent of each object as drawn.

Generation is deterministic: image ``i`` of a split draws from ``numpy.random.default_rng([seed, split, i])``
only, so the same seed gives identical JSON and PNG bytes (for a given Pillow version).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anytime.files import atomic_write

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
PATTERNS = ("solid", "stripes", "dots", "checker", "rings", "grid")
MAX_CLASSES = len(SHAPES) * (len(SHAPES) - 1)  # at least one diagonal of the grid stays for distractors

DESCRIPTION = (
    "Synthetic shapes-and-patterns detection set, as written by `anytime data synth` with its defaults (seed 0, "
    "4000 train / 500 val images, 10 classes). Images are RGB PNGs whose width and height are drawn independently "
    "from 224-288 px. Each class is an outline shape x internal pattern pair over 5 shapes (circle, square, "
    "triangle, star, cross) and 5 patterns (solid, stripes, dots, checker, concentric rings): class k < 5 is "
    "(shape k, pattern k), class k >= 5 is (shape k-5, pattern k-4 mod 5), so every shape and every pattern "
    "belongs to exactly two classes and neither alone identifies one; names are 'shape-pattern', category ids "
    "1-10. Each object gets a random rotation, a random stretch (width:height 0.74-1.35), a pattern of random "
    "orientation and period (size/6 to size/4, at least 3 px) and an outline 1/20 of its size thick; its body "
    "colour and its pattern-and-outline colour are uniform random RGB (at least 120 apart), drawn the same way "
    "for every object and distractor, so colour carries no class information. An image holds 3-12 labelled "
    "objects (fewer only if 30 random placements fail, which is rare; circumscribed diameter 35% small 10-20 px, "
    "35% medium 24-72 px, 30% large 80-160 px, log-uniform within the band) and 1-5 unlabelled distractors with "
    "the same size and colour distributions: one of the 15 shape x pattern pairs that are not classes (55%), a "
    "fragment of any pair cut by a straight line to 30-55% of its area (30%), or a hollow outline (15%). Items "
    "are drawn in random order and a placement is rejected if it would leave any labelled object, or the new "
    "item, less than 60% visible (occlusion plus the image border), so labelled objects are up to 40% hidden. "
    "Backgrounds: a two-colour linear gradient with low-frequency colour noise, 1-3 flat-coloured irregular blobs "
    "(thresholded smooth noise) and 4-14 random straight lines 1-3 px wide. Each box is the tight [x, y, w, h] "
    "box of the object's visible pixels (inside the image), area is the visible pixel count and iscrowd is 0. "
    "Image ids are 1..N; file NNNNNN.png holds image id NNNNNN + 1."
)

# (name, min px, max px, probability) at image_size 256
SIZE_BANDS = (("small", 10, 20, 0.35), ("medium", 24, 72, 0.35), ("large", 80, 160, 0.30))
MIN_VISIBLE = 0.6  # a labelled object keeps at least this fraction of its pixels visible
DISTRACTOR_KINDS = (("pair", 0.55), ("fragment", 0.30), ("hollow", 0.15))
MIN_COLOUR_DISTANCE = 120.0  # body vs pattern colour, Euclidean RGB, so patterns stay visible
SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines one generated set; two equal configs give byte-identical output."""

    seed: int = 0
    num_train: int = 4000
    num_val: int = 500
    image_size: int = 256
    num_classes: int = 10

    def validate(self) -> "SynthConfig":
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {self.num_classes}")
        if self.image_size < 64:
            raise ValueError(f"image_size must be at least 64, got {self.image_size}")
        if self.num_train < 0 or self.num_val < 0 or self.num_train + self.num_val == 0:
            raise ValueError("num_train and num_val must be >= 0 and not both 0")
        return self


def class_pairs(num_classes: int) -> tuple[list[tuple[int, int]], int]:
    """(shape index, pattern index) per class and the grid side n, filled diagonal by diagonal.

    Diagonal d pairs shape i with pattern (i + d) mod n, so after two diagonals every shape and every pattern is
    in exactly two classes; the grid's other pairs become distractors.
    """
    n = min(len(SHAPES), max(3, math.ceil(num_classes / 2)))
    pairs = [(i, (i + d) % n) for d in range(n) for i in range(n)]
    return pairs[:num_classes], n


def class_names(num_classes: int) -> list[str]:
    return [f"{SHAPES[s]}-{PATTERNS[p]}" for s, p in class_pairs(num_classes)[0]]


# -- drawing one object --------------------------------------------------------------------------------------

def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices [V, 2] of a shape with circumradius about 1, centred at the origin."""
    def ring(n, r=1.0, start=0.0):
        a = start + 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)

    if shape == "circle":
        return ring(48)
    if shape == "square":
        return ring(4, start=np.pi / 4)
    if shape == "triangle":
        return ring(3, start=-np.pi / 2)
    if shape == "hexagon":
        return ring(6)
    if shape == "star":
        pts = ring(10, start=-np.pi / 2)
        pts[1::2] *= 0.42
        return pts
    if shape == "cross":
        a = 0.33
        return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                         (-1, -a), (-a, -a)], dtype=float)
    raise ValueError(shape)


def _pattern(pattern: str, xx: np.ndarray, yy: np.ndarray, period: float, angle: float) -> np.ndarray:
    """Boolean map: True where the second colour goes. Coordinates are relative to the object's centre."""
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
    if pattern == "solid":
        return np.zeros(np.broadcast_shapes(xx.shape, yy.shape), bool)
    if pattern == "stripes":
        return np.floor(u).astype(int) % 2 == 0
    if pattern == "dots":
        return ((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) < 0.32**2
    if pattern == "checker":
        return (np.floor(u) + np.floor(v)).astype(int) % 2 == 0
    if pattern == "rings":
        return np.floor(np.hypot(xx, yy) / period).astype(int) % 2 == 0
    if pattern == "grid":
        return (u % 1 < 0.3) | (v % 1 < 0.3)
    raise ValueError(pattern)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body and pattern colour; the same draw for every object and distractor, so colour says nothing."""
    c1 = rng.integers(0, 256, 3)
    while True:
        c2 = rng.integers(0, 256, 3)
        if np.linalg.norm(c1 - c2) >= MIN_COLOUR_DISTANCE:
            return c1.astype(np.uint8), c2.astype(np.uint8)


def _object_size(rng: np.random.Generator, factor: float) -> float:
    probs = [b[3] for b in SIZE_BANDS]
    _, lo, hi, _ = SIZE_BANDS[rng.choice(len(SIZE_BANDS), p=probs)]
    return max(8.0, factor * math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass
class _Sprite:
    """One item's geometry in patch coordinates (drawn first, so rejected placements cost no painting)."""

    mask: np.ndarray  # bool [h, w]: pixels the item covers
    edge: np.ndarray  # bool [h, w]: its outline
    xx: np.ndarray  # [1, w]: pixel-centre x relative to the object's centre
    yy: np.ndarray  # [h, 1]: same for y


def _shape(rng: np.random.Generator, shape: str, size: float, kind: str = "object") -> _Sprite:
    """The outline of ``shape`` at ``size`` px; 'fragment' cuts it with a line, 'hollow' keeps only the outline."""
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    rot = rng.uniform(0, 2 * np.pi)
    pts = _unit_polygon(shape) * (size / 2) * np.array([aspect, 1 / aspect])
    pts = pts @ np.array([[math.cos(rot), math.sin(rot)], [-math.sin(rot), math.cos(rot)]])
    lo = np.floor(pts.min(0)) - 1
    w, h = (np.ceil(pts.max(0)) + 2 - lo).astype(int)
    centre = -lo  # object centre in patch pixel coordinates
    poly = [tuple(p) for p in pts + centre]

    patch = Image.new("L", (w, h))
    draw = ImageDraw.Draw(patch)
    draw.polygon(poly, fill=1)
    draw.polygon(poly, outline=2, width=max(1, round(size / 20)))
    drawn = np.asarray(patch)
    edge, mask = drawn == 2, drawn > 0
    xx = (np.arange(w, dtype=np.float32) + 0.5 - centre[0])[None, :]  # broadcast, not a full grid
    yy = (np.arange(h, dtype=np.float32) + 0.5 - centre[1])[:, None]
    if kind == "hollow":
        mask = edge
    elif kind == "fragment":  # keep the part on one side of a random line: 30-55% of the pixels
        a = rng.uniform(0, 2 * np.pi)
        proj = xx * math.cos(a) + yy * math.sin(a)
        mask = mask & (proj <= np.quantile(proj[mask], rng.uniform(0.30, 0.55)))
    return _Sprite(mask, edge, xx, yy)


def _paint(rng: np.random.Generator, sprite: _Sprite, pattern: str, size: float) -> tuple[np.ndarray, tuple]:
    """Colours [h, w, 3] for the sprite's patch: body colour, pattern and outline in the second colour."""
    c1, c2 = _colours(rng)
    period = max(3.0, size / rng.uniform(4.0, 6.0))
    second = _pattern(pattern, sprite.xx, sprite.yy, period, rng.uniform(0, np.pi)) | sprite.edge
    rgb = np.where(second[..., None], c2, c1).astype(np.uint8)
    return rgb, (tuple(int(c) for c in c1), tuple(int(c) for c in c2))


# -- backgrounds ---------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1]-ish, smooth over about w / cells pixels (a bicubic upsampled random grid)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluttered background: gradient, colour noise, irregular blobs, then straight lines. uint8 [h, w, 3].

    The smooth layers are computed on a coarse grid and upsampled, which keeps generation fast.
    """
    gh, gw = max(2, h // 8), max(2, w // 8)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = xx * math.cos(a) + yy * math.sin(a)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    coarse = c0 + t[..., None] * (c1 - c0)
    for ch in range(3):
        coarse[..., ch] += 40 * _smooth_noise(rng, gh, gw, int(rng.integers(3, 8)))
    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    for _ in range(int(rng.integers(1, 4))):
        field = _smooth_noise(rng, h, w, int(rng.integers(3, 7)))
        blob = field > np.quantile(field[::4, ::4], rng.uniform(0.75, 0.92))
        img.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), mask=Image.fromarray(blob.astype(np.uint8) * 255))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 15))):
        x0, x1 = rng.uniform(-0.2 * w, 1.2 * w, 2)
        y0, y1 = rng.uniform(-0.2 * h, 1.2 * h, 2)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 4)))
    return np.array(img)


# -- one image -----------------------------------------------------------------------------------------------

@dataclass
class SynthObject:
    """A labelled object of a generated image (colours kept so tests can check they carry no class signal)."""

    category: int  # contiguous 0..K-1
    bbox: list[float]  # visible extent [x, y, w, h]
    area: int  # visible pixels
    colours: tuple[tuple[int, ...], tuple[int, ...]]


def render_image(rng: np.random.Generator, image_size: int, num_classes: int) -> tuple[np.ndarray, list[SynthObject]]:
    """One image (uint8 [H, W, 3]) and its labelled objects."""
    pairs, n = class_pairs(num_classes)
    others = [(s, p) for s in range(n) for p in range(n) if (s, p) not in set(pairs)]
    lo, hi = round(image_size * 0.875), round(image_size * 1.125)
    h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
    factor = image_size / 256
    canvas = _Canvas(_background(rng, h, w))

    n_obj, n_dis = int(rng.integers(3, 13)), int(rng.integers(1, 6))
    kinds, kind_p = zip(*DISTRACTOR_KINDS)
    for role in rng.permutation(["object"] * n_obj + ["distractor"] * n_dis):
        for _attempt in range(30):  # a crowded image may end up with fewer objects; at least 3 fit in practice
            size = _object_size(rng, factor)
            if role == "object":
                category, kind = int(rng.integers(num_classes)), "object"
                shape, pattern = pairs[category]
            else:
                category, kind = None, str(kinds[rng.choice(len(kinds), p=kind_p)])
                shape, pattern = (others[rng.integers(len(others))] if kind == "pair"
                                  else (int(rng.integers(n)), int(rng.integers(n))))
            sprite = _shape(rng, SHAPES[shape], size, kind)
            sh, sw = sprite.mask.shape
            y0 = int(rng.integers(-(sh // 4), max(h - 3 * sh // 4, -(sh // 4)) + 1))
            x0 = int(rng.integers(-(sw // 4), max(w - 3 * sw // 4, -(sw // 4)) + 1))
            if canvas.fits(sprite.mask, x0, y0):
                canvas.draw(sprite.mask, *_paint(rng, sprite, PATTERNS[pattern], size), x0, y0, category)
                break

    objects = []
    for idx, (category, colours) in enumerate(canvas.meta):
        if category is None:
            continue
        ya, yb, xa, xb = canvas.regions[idx]
        ys, xs = np.nonzero(canvas.owner[ya:yb, xa:xb] == idx + 1)
        x1, y1, x2, y2 = xa + int(xs.min()), ya + int(ys.min()), xa + int(xs.max()) + 1, ya + int(ys.max()) + 1
        objects.append(SynthObject(category, [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], len(xs), colours))
    return canvas.image, objects


class _Canvas:
    """The image under construction plus which item owns each pixel, to enforce the occlusion limit."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.owner = np.zeros(image.shape[:2], np.int32)  # 0 = background, else 1 + item index
        self.total: list[int] = []  # pixels each item has in its sprite
        self.visible: list[int] = []  # of which still visible
        self.meta: list[tuple[int | None, tuple]] = []  # (category or None, colours)
        self.regions: list[tuple[int, int, int, int]] = []  # (y0, y1, x0, x1) of each item in the image

    def _window(self, mask: np.ndarray, x0: int, y0: int):
        """(image slices, the part of mask inside the image) for a patch at (x0, y0)."""
        h, w = self.owner.shape
        ya, yb, xa, xb = max(0, y0), min(h, y0 + mask.shape[0]), max(0, x0), min(w, x0 + mask.shape[1])
        return (ya, yb, xa, xb), mask[max(ya - y0, 0):max(yb - y0, 0), max(xa - x0, 0):max(xb - x0, 0)]

    def fits(self, mask: np.ndarray, x0: int, y0: int) -> bool:
        """Whether drawing on top keeps the item itself and every labelled object >= MIN_VISIBLE visible."""
        (ya, yb, xa, xb), m = self._window(mask, x0, y0)
        total, inside = int(mask.sum()), int(m.sum())
        if total == 0 or inside < MIN_VISIBLE * total:
            return False
        hidden = np.bincount(self.owner[ya:yb, xa:xb][m], minlength=len(self.total) + 1)[1:]
        return all(self.meta[j][0] is None or self.visible[j] - hidden[j] >= MIN_VISIBLE * self.total[j]
                   for j in np.nonzero(hidden)[0])

    def draw(self, mask: np.ndarray, rgb: np.ndarray, colours: tuple, x0: int, y0: int,
             category: int | None) -> None:
        (ya, yb, xa, xb), m = self._window(mask, x0, y0)
        region = self.owner[ya:yb, xa:xb]
        hidden = np.bincount(region[m], minlength=len(self.total) + 1)[1:]
        for j in np.nonzero(hidden)[0]:
            self.visible[j] -= int(hidden[j])
        self.image[ya:yb, xa:xb][m] = rgb[ya - y0:yb - y0, xa - x0:xb - x0][m]
        region[m] = len(self.total) + 1
        self.total.append(int(mask.sum()))
        self.visible.append(int(m.sum()))
        self.meta.append((category, colours))
        self.regions.append((ya, yb, xa, xb))


# -- writing a dataset ---------------------------------------------------------------------------------------

def _write_split(out: Path, split: str, count: int, cfg: SynthConfig, progress) -> None:
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([cfg.seed, SPLITS[split], i])
        pixels, objects = render_image(rng, cfg.image_size, cfg.num_classes)
        name = f"{i:06d}.png"
        Image.fromarray(pixels).save(image_dir / name, compress_level=1)
        images.append({"id": i + 1, "file_name": name, "width": pixels.shape[1], "height": pixels.shape[0]})
        for obj in objects:  # COCO annotation ids must be > 0 (COCOeval treats 0 as "unmatched")
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": obj.category + 1,
                                "bbox": obj.bbox, "area": obj.area, "iscrowd": 0})
        progress.update(1)
    names = class_names(cfg.num_classes)
    doc = {
        "info": {"description": DESCRIPTION, "version": "1", "seed": cfg.seed, "image_size": cfg.image_size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": name.split("-")[0]}
                       for k, name in enumerate(names)],
    }
    # atomic: a half-written set never looks complete to ensure_default
    atomic_write(out / "annotations" / f"instances_{split}.json", json.dumps(doc))


def generate(out_dir, seed: int = 0, num_train: int = 4000, num_val: int = 500, image_size: int = 256,
             num_classes: int = 10, progress: bool = True) -> Path:
    """Write the set under ``out_dir`` (train/, val/, annotations/instances_{train,val}.json); returns the path.

    Object sizes scale with ``image_size / 256`` (never below 8 px). The val annotations are written last, so
    their presence means the whole set is complete.
    """
    from tqdm import tqdm

    cfg = SynthConfig(seed, num_train, num_val, image_size, num_classes).validate()
    out = Path(out_dir)
    with tqdm(total=num_train + num_val, desc=f"synth -> {out}", unit="img", disable=not progress) as bar:
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(out, split, count, cfg, bar)
    return out


def ensure_default(data_dir) -> Path:
    """Generate the default benchmark into ``data_dir`` unless it is already there (checks the val annotations)."""
    data_dir = Path(data_dir)
    if not (data_dir / "annotations" / "instances_val.json").is_file():
        generate(data_dir)
    return data_dir
