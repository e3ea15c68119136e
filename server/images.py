"""Request images -> the model's S x S uint8 input, with clear errors for anything a client can get wrong."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from anytime.data.transforms import eval_transform

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding, with a clearer message


class BadImage(ValueError):
    """The request's image cannot be used; the message says why (answered as INVALID_ARGUMENT)."""


def decode(encoded: bytes | None, raw=None, max_pixels: int = 40_000_000) -> Image.Image:
    """A PIL RGB image from encoded bytes (JPEG/PNG/...) or a RawImage message."""
    if raw is not None:
        h, w, c = int(raw.height), int(raw.width), int(raw.channels)
        if h <= 0 or w <= 0 or c not in (1, 3):
            raise BadImage(f"raw image needs height, width > 0 and 1 or 3 channels, got {h}x{w}x{c}")
        if h * w > max_pixels:
            raise BadImage(f"image of {w}x{h} = {h * w / 1e6:.1f} megapixels exceeds the limit of {max_pixels / 1e6:.0f}")
        if len(raw.data) != h * w * c:
            raise BadImage(f"raw image data has {len(raw.data)} bytes but {h}x{w}x{c} needs {h * w * c}")
        a = np.frombuffer(raw.data, dtype=np.uint8).reshape(h, w, c)
        return Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB").convert("RGB")
    if not encoded:
        raise BadImage("the request has no image (empty bytes)")
    try:
        image = Image.open(io.BytesIO(encoded))
        w, h = image.size
        if w * h > max_pixels:
            raise BadImage(f"image of {w}x{h} = {w * h / 1e6:.1f} megapixels exceeds the limit of {max_pixels / 1e6:.0f}")
        image.load()
    except BadImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"the image bytes cannot be decoded ({type(e).__name__}: {e})") from None
    from anytime.data.coco import to_rgb

    return to_rgb(image)


def to_model_input(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """[1, 3, size, size] uint8 (longer side to size, zero padding right/bottom) and the scale factor.

    Exactly the evaluation transform, so served detections equal ``anytime eval``'s.
    """
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    tensor, target = eval_transform(size)(image, empty)
    return tensor.numpy()[None], float(target["scale"])
