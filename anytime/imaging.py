"""Images to model input and back, with Pillow and numpy only (no torch), for evaluation and serving alike.

``letterbox`` is *the* evaluation transform of the image: ``anytime eval`` and the gateway both call it, so what
the gateway feeds a model is bit for bit what evaluation measured. It lives apart from the training transforms
so that the serving path imports neither torch nor torchvision.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadImage(ValueError):
    """An image that cannot be used; the message says why (the gateway answers it as INVALID_ARGUMENT)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (greyscale, 16-bit, palette, RGBA and CMYK included; alpha is dropped)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        a = np.asarray(image, dtype=np.float32)
        if a.size and a.max() > 255:  # 16-bit data
            a = a / 257.0
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
    return image.convert("RGB")


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """uint8 [3, size, size]: the longer side resized to ``size`` (bilinear, antialiased), zero padding at the
    right and bottom; and the scale factor (model pixels per image pixel, so original = box / scale).

    An image opened and not yet decoded (``open_image``) is decoded here, as cheaply as its format allows: a JPEG
    at least twice the needed size is decoded in the DCT domain at 1/2, 1/4 or 1/8 of its size (Pillow's
    ``draft``), never below the letterboxed size, and large downscales go through an integer box reduction first
    (``reducing_gap``). Both change the last bits of the pixels, not what the image shows; evaluation and serving
    call this same function on the same encoded bytes, so what was measured offline is what is served.
    """
    w, h = image.size  # from the header: the original size, whatever the decoder does below
    factor = size / max(h, w)
    new = (max(1, round(w * factor)), max(1, round(h * factor)))
    if image.format == "JPEG" and not _decoded(image) and factor <= 0.5:
        image.draft("RGB", new)  # picks the largest DCT reduction that keeps the image at least ``new``
    image = decoded(image)
    if image.size != new:
        image = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
    out = np.zeros((3, size, size), np.uint8)
    out[:, : new[1], : new[0]] = np.asarray(image).transpose(2, 0, 1)
    return out, factor


# Pillow's documented trade-off: a gap of 3 or more is indistinguishable from a plain antialiased resize; only
# downscales by more than 3x take the box-reduction shortcut, so images near the model's size are resized as before.
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Header:
    """What the encoded header says, before any pixel is decoded: what preparing the image will cost."""

    format: str  # Pillow's format name (JPEG, PNG, GIF, TIFF, WEBP, ...), or RAW for raw pixels
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def decoded_megapixels(self, size: int) -> float:
        """Megapixels the decoder produces for a letterbox to ``size``: a JPEG's DCT scaling decodes fewer."""
        if self.format != "JPEG":
            return self.megapixels
        reduce = 1
        while reduce < 8 and max(self.width, self.height) / (2 * reduce) >= size:
            reduce *= 2
        return math.ceil(self.width / reduce) * math.ceil(self.height / reduce) / 1e6


def check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadImage(f"image of {width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the limit of "
                       f"{max_pixels / 1e6:.0f}")


def open_image(encoded: bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """An image opened from encoded bytes (JPEG, PNG, ...) with only its header read: its size is checked against
    ``max_pixels`` before any pixel is decoded, so a small file that would inflate to gigabytes costs nothing.
    ``letterbox`` decodes it (cheaply), ``decode`` decodes it whole."""
    if not encoded:
        raise BadImage("the request has no image (empty bytes)")
    try:
        image = Image.open(io.BytesIO(encoded))
        check_size(*image.size, max_pixels)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own, larger limit: refused at open
        raise BadImage(f"the image exceeds the limit of {max_pixels / 1e6:.0f} megapixels ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"the image bytes cannot be decoded ({type(e).__name__}: {e})") from None
    return image


def header(image: Image.Image) -> Header:
    return Header(image.format or "RAW", *image.size)


def _decoded(image: Image.Image) -> bool:
    """Whether the pixels are in memory (Pillow 11+ keeps them in ``_im``; older versions in ``im``)."""
    return getattr(image, "_im", None) is not None or image.__dict__.get("im") is not None


def _load(image: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image; a truncated or corrupt body is a ``BadImage``."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(f"the image bytes cannot be decoded ({type(e).__name__}: {e})") from None
    return image


def decoded(image: Image.Image) -> Image.Image:
    """An opened image decoded whole, as RGB."""
    return to_rgb(_load(image))


def decode(encoded: bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """An RGB image from encoded bytes, decoded whole (``open_image``'s checks first)."""
    return decoded(open_image(encoded, max_pixels))


def from_pixels(data: bytes, height: int, width: int, channels: int, max_pixels: int = 40_000_000) -> Image.Image:
    """An RGB image from raw row-major uint8 pixels (1 or 3 channels), with clear errors for wrong shapes."""
    h, w, c = int(height), int(width), int(channels)
    if h <= 0 or w <= 0 or c not in (1, 3):
        raise BadImage(f"raw image needs height, width > 0 and 1 or 3 channels, got {h}x{w}x{c}")
    check_size(w, h, max_pixels)
    if len(data) != h * w * c:
        raise BadImage(f"raw image data has {len(data)} bytes but {h}x{w}x{c} needs {h * w * c}")
    a = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
    return Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB").convert("RGB")


def boxes_to_original(boxes, scale: float, height: int, width: int):
    """Undo ``letterbox`` for xyxy boxes (numpy or torch): divide by ``scale``, clip to the original image.

    The padding at the right/bottom is not part of the image, so a box reaching into it is cut at the border.
    Returns (boxes, keep) where ``keep`` marks boxes that still have an area.
    """
    boxes = boxes / scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, keep
