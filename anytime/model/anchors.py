"""Anchors (3 octave scales x 3 aspect ratios per level) and the box coding that goes with them."""

from __future__ import annotations

import math

import torch

# RetinaNet's box coding (dx, dy, dw, dh) with unit weights, as in the TensorFlow reference. Width and height
# deltas are clipped before exp so that a wild prediction cannot overflow (the same bound as torchvision's).
DELTA_CLIP = math.log(1000.0 / 16)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets [N, 4] that take each anchor [N, 4] (xyxy) to its box [N, 4] (xyxy)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    return torch.stack(((bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)), dim=1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes [N, 4] (xyxy) from deltas [N, 4] relative to anchors [N, 4]: the inverse of ``encode_boxes``."""
    anchors = anchors.to(deltas.dtype)
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    cx, cy = deltas[:, 0] * aw + ax, deltas[:, 1] * ah + ay
    half_w = 0.5 * torch.exp(deltas[:, 2].clamp(max=DELTA_CLIP)) * aw
    half_h = 0.5 * torch.exp(deltas[:, 3].clamp(max=DELTA_CLIP)) * ah
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)


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
