"""Anchor assignment and the deep-supervision loss: focal loss + smooth-L1, summed over exits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, sigmoid_focal_loss

from anytime.model.anchors import encode_boxes

# RetinaNet's assignment: IoU >= 0.5 foreground, < 0.4 background, in between ignored; every ground-truth
# box keeps its best anchor even below 0.5.
FOREGROUND_IOU, BACKGROUND_IOU = 0.5, 0.4
BACKGROUND, IGNORED = -1, -2
CROWD_IOA = 0.5  # background anchors covered this much by an iscrowd region are ignored, not negatives


@dataclass
class AnchorTargets:
    """Training targets for every anchor of a batch; computed once and shared by every exit's loss."""

    labels: torch.Tensor  # [B, N] class index, -1 background, -2 ignored
    boxes: torch.Tensor  # [B, N, 4] encoded regression targets (valid where labels >= 0)
    num_foreground: torch.Tensor  # scalar, at least 1


def match(iou: torch.Tensor) -> torch.Tensor:
    """For each anchor, the index of its ground-truth box ([G, N] IoU in), or BACKGROUND / IGNORED.

    An anchor takes the box it overlaps most: at ``FOREGROUND_IOU`` or more it is that box's; below
    ``BACKGROUND_IOU`` background; in between ignored. Then every box also keeps the anchors it overlaps most
    (ties included), even below the foreground threshold, so no box goes without an anchor.
    """
    best, idx = iou.max(dim=0)
    matched = idx.clone()
    matched[best < FOREGROUND_IOU] = IGNORED
    matched[best < BACKGROUND_IOU] = BACKGROUND
    best_per_box = iou.max(dim=1, keepdim=True).values
    _, keep = torch.nonzero(iou == best_per_box, as_tuple=True)
    matched[keep] = idx[keep]
    return matched


def assign(anchors: torch.Tensor, targets: list[dict]) -> AnchorTargets:
    labels, boxes = [], []
    for t in targets:
        gt_boxes, gt_labels = t["boxes"], t["labels"]
        lab = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        enc = torch.zeros_like(anchors)
        if gt_boxes.numel():
            matched = match(box_iou(gt_boxes, anchors))  # [N]: gt index, BACKGROUND or IGNORED
            fg = matched >= 0
            lab[fg] = gt_labels[matched[fg]]
            lab[matched == IGNORED] = IGNORED
            enc[fg] = encode_boxes(gt_boxes[matched[fg]], anchors[fg])
        crowd = t.get("crowd_boxes")
        if crowd is not None and crowd.numel():
            lab[(lab == -1) & (_ioa(anchors, crowd).amax(1) > CROWD_IOA)] = -2
        labels.append(lab)
        boxes.append(enc)
    labels = torch.stack(labels)
    return AnchorTargets(labels, torch.stack(boxes), (labels >= 0).sum().clamp(min=1).float())


def _ioa(anchors: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection over anchor area, [N, M]."""
    lt = torch.max(anchors[:, None, :2], regions[None, :, :2])
    rb = torch.min(anchors[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (anchors[:, 2:] - anchors[:, :2]).prod(-1)
    return inter / area[:, None].clamp(min=1e-6)


def exit_loss(cls_logits: torch.Tensor, box_deltas: torch.Tensor, t: AnchorTargets,
              alpha: float, gamma: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal classification loss and smooth-L1 box loss of one exit, normalised by the foreground count."""
    valid = t.labels >= -1
    fg = t.labels >= 0
    onehot = F.one_hot(t.labels.clamp(min=0), cls_logits.shape[-1]).to(cls_logits.dtype) * fg[..., None]
    cls = sigmoid_focal_loss(cls_logits[valid], onehot[valid], alpha=alpha, gamma=gamma, reduction="sum")
    box = F.smooth_l1_loss(box_deltas[fg], t.boxes[fg], beta=beta, reduction="sum")
    return cls / t.num_foreground, box / t.num_foreground
