"""Per-exit post-processing: top-k, decode, class-aware NMS, padded to a fixed number of detections.

Written with batch-level tensor ops only (no Python loop over images) so that the same code runs in eager
PyTorch and exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from anytime.model.anchors import decode_boxes


def candidates(cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor, image_size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every anchor's class scores [B, N, K] (sigmoid) and decoded box [B, N, 4] (clamped to the input).

    These are what NMS chooses from, before any discrete decision: export verification compares them between
    runtimes with a tolerance, because they change smoothly with the arithmetic while NMS output does not.
    """
    b, n, _ = cls_logits.shape
    boxes = decode_boxes(box_deltas.reshape(-1, 4), anchors.repeat(b, 1)).clamp(min=0, max=float(image_size))
    return torch.sigmoid(cls_logits), boxes.reshape(b, n, 4)


def postprocess(cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor, image_size: int,
                score_thresh: float, nms_thresh: float, topk: int, max_detections: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns boxes [B, D, 4] (xyxy, input pixels), scores [B, D], labels [B, D] (int64), count [B] (int64).

    Rows past ``count`` are zero. Detections of an image are sorted by score, highest first.
    """
    b, n, k = cls_logits.shape
    scores = torch.sigmoid(cls_logits).reshape(b, n * k)
    top_scores, top_idx = scores.topk(min(topk, n * k), dim=1)  # [B, T]
    anchor_idx = torch.div(top_idx, k, rounding_mode="floor")
    labels = top_idx - anchor_idx * k
    deltas = torch.gather(box_deltas, 1, anchor_idx[..., None].expand(-1, -1, 4))
    boxes = decode_boxes(deltas.reshape(-1, 4), anchors[anchor_idx.reshape(-1)])
    boxes = boxes.clamp(min=0, max=float(image_size))

    flat_scores, flat_labels = top_scores.reshape(-1), labels.reshape(-1)
    t = top_scores.shape[1]
    image_ids = torch.arange(b, device=cls_logits.device)[:, None].expand(b, t).reshape(-1)
    # One NMS for the whole batch, grouped by (image, class). While tracing for export, batched_nms offsets
    # each group's boxes so groups never overlap: a single NMS op, exportable at any batch size.
    keep = batched_nms(boxes, flat_scores, image_ids * k + flat_labels, nms_thresh)  # sorted by score
    keep = keep[flat_scores[keep] > score_thresh]

    # Rank of each kept detection within its image, keeping score order: sort by (image, position in keep),
    # a unique key, so no stable sort is needed (ONNX has none).
    kept_images = image_ids[keep]
    position = torch.arange(keep.shape[0], device=keep.device)
    order = torch.argsort(kept_images * keep.shape[0] + position)
    keep, kept_images = keep[order], kept_images[order]
    per_image = (kept_images[:, None] == torch.arange(b, device=keep.device)[None, :]).sum(0)  # [B]
    first = torch.cumsum(per_image, 0) - per_image
    rank = position - first[kept_images]
    fits = rank < max_detections
    keep, kept_images, rank = keep[fits], kept_images[fits], rank[fits]
    slot = kept_images * max_detections + rank

    out_boxes = torch.zeros(b * max_detections, 4, dtype=boxes.dtype, device=boxes.device)
    out_scores = torch.zeros(b * max_detections, dtype=flat_scores.dtype, device=boxes.device)
    out_labels = torch.zeros(b * max_detections, dtype=torch.long, device=boxes.device)
    out_boxes = out_boxes.index_put((slot,), boxes[keep])
    out_scores = out_scores.index_put((slot,), flat_scores[keep])
    out_labels = out_labels.index_put((slot,), flat_labels[keep])
    count = per_image.clamp(max=max_detections)
    return (out_boxes.reshape(b, max_detections, 4), out_scores.reshape(b, max_detections),
            out_labels.reshape(b, max_detections), count)
