"""Anchor assignment and the deep-supervision loss: focal loss + smooth-L1, summed over exits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

from anytime.model.anchors import BOX_CODER

# RetinaNet's assignment: IoU >= 0.5 foreground, < 0.4 background, in between ignored; every ground-truth
# box keeps its best anchor even below 0.5.
MATCHER = Matcher(0.5, 0.4, allow_low_quality_matches=True)
CROWD_IOA = 0.5  # background anchors covered this much by an iscrowd region are ignored, not negatives


@dataclass
class AnchorTargets:
    """Training targets for every anchor of a batch; computed once and shared by every exit's loss."""

    labels: torch.Tensor  # [B, N] class index, -1 background, -2 ignored
    boxes: torch.Tensor  # [B, N, 4] encoded regression targets (valid where labels >= 0)
    num_foreground: torch.Tensor  # scalar, at least 1


def assign(anchors: torch.Tensor, targets: list[dict]) -> AnchorTargets:
    labels, boxes = [], []
    for t in targets:
        gt_boxes, gt_labels = t["boxes"], t["labels"]
        lab = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        enc = torch.zeros_like(anchors)
        if gt_boxes.numel():
            matched = MATCHER(box_iou(gt_boxes, anchors))  # [N]: gt index, -1 below, -2 between
            fg = matched >= 0
            lab[fg] = gt_labels[matched[fg]]
            lab[matched == Matcher.BETWEEN_THRESHOLDS] = -2
            enc[fg] = BOX_CODER.encode_single(gt_boxes[matched[fg]], anchors[fg])
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
