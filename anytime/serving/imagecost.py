"""What preparing a request's image will cost, predicted from its header before a pixel is decoded.

On ordinary photos the gateway spends as much CPU decoding and letterboxing as the model spends computing, and
that cost varies from under a millisecond (a 256 px PNG) to tens (a large PNG photo), on the same cores the
model runs on. So admission must count it, as it counts an exit's latency: a request's image is work.

The model is the latency model's (``anytime.serving.latency``), one per format family: seconds =
``base * units * R``, where ``units`` is the decoded megapixels plus a fixed part (header, letterbox, copies),
``base`` the seconds per unit measured on this machine at start-up (``calibrate``), and ``R`` a noise factor
learnt online from every image the gateway prepares, over a short horizon so that a run of slow images or a busy
neighbour shows within about a second. PNG and the rest count every pixel. A JPEG counts the megapixels its DCT
scaling decodes (``Header.decoded_megapixels``) plus a share of all of them, since the entropy decoding reads every
coefficient whatever the scale: fitted on photo-like JPEGs of 0.3-12 megapixels to 256 px, 0.45 ms + 2.4 ms per
megapixel + 8.3 ms per decoded megapixel, so a full megapixel weighs about 0.3 decoded ones.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from anytime.imaging import Header, letterbox, open_image
from anytime.serving.latency import LatencyProfile

FIXED_UNITS = 0.05  # what an image costs beyond its pixels, in decoded-megapixel equivalents
JPEG_ENTROPY_WEIGHT = 0.3  # a JPEG's full megapixel, in decoded megapixels (see the module docstring)
FAMILIES = ("JPEG", "PNG", "RAW", "OTHER")  # OTHER: GIF, TIFF, WEBP, BMP, ... (rarer, learnt together)


def family(header: Header) -> str:
    return header.format if header.format in FAMILIES else "OTHER"


class ImageCost:
    """Per-format cost of preparing an image (seconds), at a quantile, its mean and its spread."""

    def __init__(self, image_size: int, base_s_per_unit: dict[str, list[float]], quantile: float = 0.95,
                 horizon_s: float = 2.0, window: int = 64):
        self.image_size = image_size
        self.profiles = {f: LatencyProfile.from_samples({0: [s * 1e3 for s in samples]}, quantile=quantile,
                                                        horizon_s=horizon_s, window=window)
                         for f, samples in base_s_per_unit.items()}

    def units(self, header: Header) -> float:
        return units(header, self.image_size)

    def _profile(self, header: Header) -> LatencyProfile:
        return self.profiles.get(family(header)) or self.profiles["OTHER"]

    def predict(self, header: Header, quantile: float | None = None) -> float:
        return self._profile(header).predict(0, quantile=quantile) * self.units(header)

    def expected(self, header: Header) -> float:
        return self._profile(header).expected(0) * self.units(header)

    def spread(self, header: Header) -> float:
        return self._profile(header).spread(0) * self.units(header)

    def observe(self, header: Header, seconds: float, now: float) -> None:
        self._profile(header).observe(0, seconds / self.units(header), now)

    def tick(self, now: float) -> None:
        for p in self.profiles.values():
            p.tick(now)

    @classmethod
    def calibrate(cls, image_size: int, runs: int = 5, **kwargs) -> "ImageCost":
        """Time this machine's decode + letterbox of a photo-like image per format (about 0.2 s in all)."""
        samples: dict[str, list[float]] = {}
        photo = _photo_like(640, 480)
        for fmt, save in (("JPEG", {"format": "JPEG", "quality": 90}), ("PNG", {"format": "PNG"}),
                          ("OTHER", {"format": "TIFF"})):
            buf = io.BytesIO()
            photo.save(buf, **save)
            data = buf.getvalue()
            head = Header(fmt if fmt != "OTHER" else "TIFF", *photo.size)
            samples[fmt] = _time_units(lambda: letterbox(open_image(data), image_size), head, image_size, runs)
        raw = np.asarray(photo)
        head = Header("RAW", *photo.size)
        samples["RAW"] = _time_units(lambda: letterbox(Image.fromarray(raw, "RGB"), image_size), head, image_size, runs)
        return cls(image_size, samples, **kwargs)


def units(header: Header, image_size: int) -> float:
    """The work of preparing an image for a letterbox to ``image_size``, in decoded-megapixel equivalents."""
    if header.format == "JPEG":
        return FIXED_UNITS + header.decoded_megapixels(image_size) + JPEG_ENTROPY_WEIGHT * header.megapixels
    return FIXED_UNITS + header.megapixels


def _time_units(fn, head: Header, image_size: int, runs: int) -> list[float]:
    n = units(head, image_size)
    fn()  # warm: lazy imports, allocations
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) / n)
    return out


def _photo_like(width: int, height: int) -> Image.Image:
    """Smooth shading with texture and edges: compresses like a photo (not like noise, not like a flat image)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 23.0) * np.cos(y / 17.0)], -1)
    a += rng.normal(0, 8, a.shape)
    a[height // 3: height // 2, width // 4: width // 2] = (200, 40, 40)  # an object with sharp edges
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
