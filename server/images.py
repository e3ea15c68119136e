"""Request images -> the model's S x S uint8 input, with clear errors for anything a client can get wrong.

Torch-free: decoding and letterboxing are ``anytime.imaging``'s, the same functions evaluation uses.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from anytime.imaging import BadImage, decode as decode_bytes, from_pixels, letterbox

__all__ = ["BadImage", "decode", "to_model_input"]


def decode(encoded: bytes | None, raw=None, max_pixels: int = 40_000_000) -> Image.Image:
    """A PIL RGB image from encoded bytes (JPEG/PNG/...) or a RawImage message."""
    if raw is not None:
        return from_pixels(raw.data, raw.height, raw.width, raw.channels, max_pixels)
    return decode_bytes(encoded, max_pixels)


def to_model_input(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """[1, 3, size, size] uint8 (longer side to size, zero padding right/bottom) and the scale factor.

    Exactly the evaluation transform, so served detections equal ``anytime eval``'s.
    """
    pixels, scale = letterbox(image, size)
    return pixels[None], scale
