"""Image + box transforms that turn any image into the model's fixed S x S uint8 input.

Training follows the paper (§4.1): scale jitter of the longer side in [0.8, 1.2] x S, a random S x S crop (or
zero padding at the right/bottom when the image is smaller), a horizontal flip with p = 0.5, then boxes that
became too small are dropped. Evaluation resizes the longer side to S and pads right/bottom, so the only change
to coordinates is ``scale`` and the evaluator maps boxes back with ``box / scale``. Its image part is
``anytime.imaging.letterbox``, the very function the gateway runs, so served inputs equal evaluated ones.

All randomness comes from torch's RNG, so a resumed run that restores the RNG state sees the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from anytime.imaging import letterbox, to_rgb


@dataclass(frozen=True)
class DetectionTransform:
    """Callable ``(PIL image or uint8 tensor [3, H, W], target) -> (uint8 tensor [3, size, size], target)``.

    The target's ``boxes`` / ``crowd_boxes`` (xyxy) and ``labels`` are updated and ``scale`` is multiplied by
    the resize factor. In training the crop offset also moves boxes, so only the eval transform is inverted by
    ``scale`` alone.
    """

    size: int
    train: bool = False
    scale_range: tuple[float, float] = (0.8, 1.2)
    flip_prob: float = 0.5
    min_box_size: float = 2.0  # px; boxes narrower or shorter than this after the transform are dropped

    def __call__(self, image, target: dict) -> tuple[torch.Tensor, dict]:
        if not self.train:
            return self._letterbox(image, target)
        img = _to_tensor(image)
        h, w = img.shape[-2:]
        s = float(torch.empty(()).uniform_(*self.scale_range)) if self.train else 1.0
        factor = max(1, round(self.size * s)) / max(h, w)
        new_hw = [max(1, round(h * factor)), max(1, round(w * factor))]
        boxes = _boxes(target["boxes"], (h, w))
        crowd = _boxes(target.get("crowd_boxes", torch.zeros(0, 4)), (h, w))

        img, boxes, crowd = (F.resize(x, new_hw, antialias=True) for x in (img, boxes, crowd))
        top = left = 0
        if self.train:  # random crop where the resized image is larger, padding where it is smaller
            top = int(torch.randint(0, max(new_hw[0] - self.size, 0) + 1, ()))
            left = int(torch.randint(0, max(new_hw[1] - self.size, 0) + 1, ()))
        img, boxes, crowd = (F.crop(x, top, left, self.size, self.size) for x in (img, boxes, crowd))
        if self.train and float(torch.rand(())) < self.flip_prob:
            img, boxes, crowd = (F.horizontal_flip(x) for x in (img, boxes, crowd))

        keep = _big_enough(boxes, self.min_box_size)
        out = dict(target)
        out["boxes"] = boxes.as_subclass(torch.Tensor)[keep].float()
        out["labels"] = target["labels"][keep]
        out["crowd_boxes"] = crowd.as_subclass(torch.Tensor)[_big_enough(crowd, self.min_box_size)].float()
        out["scale"] = float(target.get("scale", 1.0)) * factor
        return img.as_subclass(torch.Tensor).contiguous(), out


    def _letterbox(self, image, target: dict) -> tuple[torch.Tensor, dict]:
        """The evaluation transform: ``letterbox`` for the pixels, boxes scaled by the same factor."""
        pil = image if isinstance(image, Image.Image) else Image.fromarray(_to_tensor(image).permute(1, 2, 0).numpy())
        pixels, factor = letterbox(pil, self.size)
        out = dict(target)
        for key in ("boxes", "crowd_boxes"):
            boxes = torch.as_tensor(target.get(key, torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4) * factor
            boxes = boxes.clamp(0, self.size)
            keep = _big_enough(boxes, self.min_box_size)
            out[key] = boxes[keep]
            if key == "boxes":
                out["labels"] = target["labels"][keep]
        out["scale"] = float(target.get("scale", 1.0)) * factor
        return torch.from_numpy(pixels), out


def train_transform(size: int) -> DetectionTransform:
    """Scale jitter 0.8-1.2, random crop/pad to size x size, horizontal flip; uses torch's RNG."""
    return DetectionTransform(size, train=True)


def eval_transform(size: int) -> DetectionTransform:
    """Longer side to ``size``, zero padding right/bottom; deterministic, inverted by ``box / target['scale']``."""
    return DetectionTransform(size, train=False)


def _to_tensor(image) -> tv_tensors.Image:
    if isinstance(image, Image.Image):
        image = to_rgb(image)
        return tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
        return tv_tensors.Image(image)
    raise TypeError(f"expected a PIL image or a uint8 tensor [3, H, W], got {type(image).__name__}")


def _boxes(boxes, hw) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                    canvas_size=tuple(hw))


def _big_enough(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    wh = boxes[:, 2:] - boxes[:, :2]
    return (wh >= min_size).all(dim=1).as_subclass(torch.Tensor)
