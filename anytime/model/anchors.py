"""Anchors (3 octave scales x 3 aspect ratios per level) and the box coding that goes with them."""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder

# RetinaNet's box coding (dx, dy, dw, dh), unit weights as in the TensorFlow reference.
BOX_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


def make_anchors(image_size: int, levels: tuple[int, ...], scales: int = 3,
                 aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0), anchor_size: float = 4.0) -> torch.Tensor:
    """All anchors [N, 4] (x1, y1, x2, y2) for a square input, ordered level, y, x, (scale, ratio).

    The order matches ``RetinaHead``'s output layout. Centres sit at (i + 0.5) * stride.
    """
    out = []
    for level in levels:
        stride = 2 ** level
        n = image_size // stride
        shapes = []
        for s in range(scales):
            size = anchor_size * stride * 2 ** (s / scales)
            for r in aspect_ratios:  # r = height / width
                w, h = size / r**0.5, size * r**0.5
                shapes.append((-w / 2, -h / 2, w / 2, h / 2))
        base = torch.tensor(shapes, dtype=torch.float32)  # [A, 4]
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        shift = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # [HW, 1, 4]
        out.append((shift + base).reshape(-1, 4))
    return torch.cat(out)
