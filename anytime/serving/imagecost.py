"""What preparing a request's image will cost, predicted from its header before a pixel is decoded.

On ordinary photos the gateway spends as much CPU decoding and letterboxing as the model spends computing, and
that cost varies from under a millisecond (a 256 px PNG) to tens (a large PNG photo), on the same cores the
model runs on. So admission must count it, as it counts an exit's latency: a request's image is work.

Per format family, the wall time of preparing an image is a line in its work ``units`` (``units``: decoded
megapixels, plus a share of all of them for a JPEG): ``seconds = a + b * units``, with a spread around it. The
line is fitted by least squares to the images prepared in the last ``horizon_s`` seconds (at most ``window``),
so a run of slow images or a busy neighbour shows within about a second; while there are fewer than
``min_samples`` of them, the points measured on this machine at start-up (``calibrate``) fill in. A line, not a
factor on a per-unit cost (as the exits' latency model has): under load a decode also waits for the cores and
the interpreter, a delay that hardly grows with the image, and a factor learnt on small images would then
inflate every large one (seen here: a 1000 px PNG predicted at 67 ms that took 20-50 ms).

JPEG's units: fitted on photo-like JPEGs of 0.3-12 megapixels to 256 px, 0.45 ms + 2.4 ms per megapixel + 8.3 ms
per decoded megapixel (its DCT scaling decodes 1/4-1/64 of them), since the entropy decoding reads every
coefficient whatever the scale: so a full megapixel weighs about 0.3 decoded ones.
"""

from __future__ import annotations

import io
import math
import time
from collections import deque
from statistics import NormalDist

import numpy as np
from PIL import Image

from anytime.imaging import Header, letterbox, open_image

JPEG_ENTROPY_WEIGHT = 0.3  # a JPEG's full megapixel, in decoded megapixels (see the module docstring)
MIN_RELATIVE_SPREAD = 0.1
FAMILIES = ("JPEG", "PNG", "RAW", "OTHER")  # OTHER: GIF, TIFF, WEBP, BMP, ... (rarer, learnt together)


def family(header: Header) -> str:
    return header.format if header.format in FAMILIES else "OTHER"


class CostLine:
    """Seconds = a + b * units, fitted to recent (units, seconds) points, with the spread of the points about it."""

    def __init__(self, prior: list[tuple[float, float]], horizon_s: float = 2.0, window: int = 64,
                 min_samples: int = 8, refit_s: float = 0.05):
        self.prior = list(prior)
        self.horizon_s, self.window, self.min_samples = horizon_s, window, min_samples
        # Refitting costs about 0.1 ms (numpy over up to 64 points), and the gateway asks for a fit on every request.
        # A line over the last 2 s moves little in 50 ms, so it is refitted at most that often (clock: the times of
        # observe and tick), however many images arrive (profiled: 1.6 % of the gateway's samples at 135/s).
        self.refit_s = refit_s
        self._recent: deque[tuple[float, float, float]] = deque()  # (when, units, seconds)
        self._fit: tuple[float, float, float] | None = None  # (a, b, sd)
        self._stale = True  # the points changed since the fit
        self._now = self._fit_at = -math.inf

    def observe(self, units: float, seconds: float, now: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self._recent.append((now, units, seconds))
            if len(self._recent) > self.window:
                self._recent.popleft()
            self._stale, self._now = True, max(self._now, now)

    def tick(self, now: float) -> None:
        self._now = max(self._now, now)
        while self._recent and now - self._recent[0][0] > self.horizon_s:
            self._recent.popleft()
            self._stale = True

    def fit(self) -> tuple[float, float, float]:
        """(a, b, sd): the recent points, and the prior's while they are fewer than ``min_samples``."""
        if self._fit is None or (self._stale and self._now - self._fit_at >= self.refit_s):
            self._stale, self._fit_at = False, self._now
            points = [(u, s, 1.0) for _, u, s in self._recent]
            missing = self.min_samples - len(points)
            if missing > 0:
                points += [(u, s, missing / len(self.prior)) for u, s in self.prior]
            u, y, w = (np.array(c, dtype=float) for c in zip(*points))
            mu, my = np.average(u, weights=w), np.average(y, weights=w)
            var_u = np.average((u - mu) ** 2, weights=w)
            b = max(np.average((u - mu) * (y - my), weights=w) / var_u, 0.0) if var_u > 1e-12 else 0.0
            a = my - b * mu
            if a < 0:  # a line through the origin rather than a negative fixed cost
                b, a = float(np.sum(w * u * y) / max(np.sum(w * u * u), 1e-12)), 0.0
            residuals = y - (a + b * u)
            sd = float(np.sqrt(np.average(residuals ** 2, weights=w)))
            self._fit = (float(a), float(b), sd)
        return self._fit


class ImageCost:
    """Per-format cost of preparing an image (seconds): at a quantile, its mean and its spread."""

    def __init__(self, image_size: int, prior: dict[str, list[tuple[float, float]]], quantile: float = 0.95,
                 **line_options):
        self.image_size = image_size
        self.z = NormalDist().inv_cdf(quantile)
        self.lines = {f: CostLine(points, **line_options) for f, points in prior.items()}

    def units(self, header: Header, size: int | None = None) -> float:
        """Work units of preparing the image for a letterbox to ``size`` (default: the calibrated size): a JPEG
        decoded for a smaller size decodes fewer pixels (DCT scaling), the other formats decode them all."""
        return units(header, size or self.image_size)

    def _line(self, header: Header) -> CostLine:
        return self.lines.get(family(header)) or self.lines["OTHER"]

    def estimate(self, header: Header, size: int | None = None) -> tuple[float, float]:
        """(mean, standard deviation) of the image's cost for a letterbox to ``size``, from one fit. The deviation
        is the spread about the line, at least ``MIN_RELATIVE_SPREAD`` of the mean: two calibration points fit a
        line exactly, and an image's content moves its cost (noise and detail weigh on PNG's deflate)."""
        a, b, sd = self._line(header).fit()
        mean = a + b * self.units(header, size)
        return mean, max(sd, MIN_RELATIVE_SPREAD * mean)

    def expected(self, header: Header) -> float:
        return self.estimate(header)[0]

    def spread(self, header: Header) -> float:
        return self.estimate(header)[1]

    def predict(self, header: Header, quantile: float | None = None) -> float:
        z = self.z if quantile is None else NormalDist().inv_cdf(quantile)
        mean, sd = self.estimate(header)
        return mean + z * sd

    def observe(self, header: Header, seconds: float, now: float, size: int | None = None) -> None:
        self._line(header).observe(self.units(header, size), seconds, now)

    def tick(self, now: float) -> None:
        for line in self.lines.values():
            line.tick(now)

    @classmethod
    def calibrate(cls, image_size: int, runs: int = 3, **kwargs) -> "ImageCost":
        """Time this machine's decode + letterbox of photo-like images of two sizes per format (about 0.3 s)."""
        prior: dict[str, list[tuple[float, float]]] = {f: [] for f in FAMILIES}
        for width, height in ((320, 240), (1024, 768)):
            photo = _photo_like(width, height)
            for name, save in (("JPEG", {"format": "JPEG", "quality": 90}), ("PNG", {"format": "PNG"}),
                               ("OTHER", {"format": "TIFF"})):
                buf = io.BytesIO()
                photo.save(buf, **save)
                data = buf.getvalue()
                head = Header(name if name != "OTHER" else "TIFF", width, height)
                prior[name].append(_timed(lambda: letterbox(open_image(data), image_size), head, image_size, runs))
            raw = np.asarray(photo)
            prior["RAW"].append(_timed(lambda: letterbox(Image.fromarray(raw, "RGB"), image_size),
                                       Header("RAW", width, height), image_size, runs))
        return cls(image_size, prior, **kwargs)


def units(header: Header, image_size: int) -> float:
    """The work of preparing an image for a letterbox to ``image_size``, in decoded-megapixel equivalents."""
    if header.format == "JPEG":
        return header.decoded_megapixels(image_size) + JPEG_ENTROPY_WEIGHT * header.megapixels
    return header.megapixels


def _timed(fn, head: Header, image_size: int, runs: int) -> tuple[float, float]:
    """(units, median seconds) of ``fn`` on this machine, after a warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return units(head, image_size), float(np.median(times))


def _photo_like(width: int, height: int) -> Image.Image:
    """Smooth shading with texture and edges: compresses like a photo (not like noise, not like a flat image)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 23.0) * np.cos(y / 17.0)], -1)
    a += rng.normal(0, 8, a.shape)
    a[height // 3: height // 2, width // 4: width // 2] = (200, 40, 40)  # an object with sharp edges
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
