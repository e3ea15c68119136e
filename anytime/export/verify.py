"""Does an exported graph compute what the PyTorch model computes? A check that holds on every CPU.

Two runtimes never agree to the last bit: ONNX Runtime and PyTorch sum in different orders, and each CPU has
its own kernels. Before NMS that is harmless: every anchor's scores and decoded box differ by about 1e-5 and can
be compared with a tolerance. NMS and top-k then make discrete choices, and a difference in the last bit can
flip a near-tie (two scores 1e-6 apart, an IoU a hair from the threshold), so detections after NMS cannot be
compared one to one. The check therefore has two parts:

1. ``check_candidates``: the pre-NMS scores and boxes of every anchor agree within ``Tolerance``;
2. ``check_nms``: the exported graph's detections are *a* valid result of greedy NMS over the reference
   candidates, where "valid" allows any choice a near-tie (within the tolerance) could explain: each detection
   is a candidate, kept detections do not suppress each other, and every stronger candidate left out is
   suppressed by a kept detection, was cut by top-k, or fell below the last kept score of a full list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    score: float = 1e-3  # absolute, on sigmoid scores
    box_fraction: float = 1e-3  # absolute box tolerance as a fraction of the input size (0.26 px at 256)
    iou: float = 1e-3
    feature: float = 1e-3  # stage features: absolute, relative to the tensor's largest magnitude (at least 1)

    def box(self, image_size: int) -> float:
        return self.box_fraction * image_size


@dataclass(frozen=True)
class NmsSettings:
    """What the graph's post-processing was built with (from the model config)."""

    score_thresh: float
    nms_thresh: float
    topk: int
    max_detections: int
    image_size: int

    @classmethod
    def of(cls, cfg) -> "NmsSettings":
        return cls(cfg.score_thresh, cfg.nms_thresh, cfg.topk_candidates, cfg.detections_per_img, cfg.image_size)


class Mismatch(AssertionError):
    """The exported graph does not reproduce the reference; the message says where."""


def check_candidates(got_scores, got_boxes, ref_scores, ref_boxes, image_size: int, tol: Tolerance = Tolerance()) -> None:
    """Pre-NMS scores [B, N, K] and boxes [B, N, 4] of two runtimes agree within the tolerance."""
    got_scores, ref_scores = np.asarray(got_scores, np.float64), np.asarray(ref_scores, np.float64)
    got_boxes, ref_boxes = np.asarray(got_boxes, np.float64), np.asarray(ref_boxes, np.float64)
    if got_scores.shape != ref_scores.shape or got_boxes.shape != ref_boxes.shape:
        raise Mismatch(f"candidate shapes differ: scores {got_scores.shape} vs {ref_scores.shape}, "
                       f"boxes {got_boxes.shape} vs {ref_boxes.shape}")
    ds, db = np.abs(got_scores - ref_scores), np.abs(got_boxes - ref_boxes)
    if ds.size and ds.max() > tol.score:
        i = np.unravel_index(ds.argmax(), ds.shape)
        raise Mismatch(f"pre-NMS score of image {i[0]}, anchor {i[1]}, class {i[2]} differs by {ds.max():.2e} "
                       f"(tolerance {tol.score:g})")
    if db.size and db.max() > tol.box(image_size):
        i = np.unravel_index(db.argmax(), db.shape)
        raise Mismatch(f"decoded box of image {i[0]}, anchor {i[1]} differs by {db.max():.3g} px "
                       f"(tolerance {tol.box(image_size):.3g} px)")


def check_nms(detections: dict, ref_scores, ref_boxes, settings: NmsSettings, tol: Tolerance = Tolerance()) -> None:
    """``detections`` (boxes [B, D, 4], scores [B, D], labels [B, D], count [B]) are a valid greedy NMS of the
    reference candidates (scores [B, N, K], boxes [B, N, 4]) under ``settings``, near-ties allowed."""
    boxes, scores = np.asarray(detections["boxes"], np.float64), np.asarray(detections["scores"], np.float64)
    labels, count = np.asarray(detections["labels"]), np.asarray(detections["count"]).reshape(-1)
    ref_scores, ref_boxes = np.asarray(ref_scores, np.float64), np.asarray(ref_boxes, np.float64)
    for i in range(ref_scores.shape[0]):
        try:
            _check_image(boxes[i], scores[i], labels[i], int(count[i]), ref_scores[i], ref_boxes[i], settings, tol)
        except Mismatch as e:
            raise Mismatch(f"image {i}: {e}") from None


def _check_image(boxes, scores, labels, n, cand_scores, cand_boxes, s: NmsSettings, tol: Tolerance) -> None:
    box_tol = tol.box(s.image_size)
    if not 0 <= n <= s.max_detections:
        raise Mismatch(f"detection count {n} outside 0..{s.max_detections}")
    if np.any(scores[n:] != 0) or np.any(boxes[n:] != 0) or np.any(labels[n:] != 0):
        raise Mismatch(f"rows past the count ({n}) are not zero")
    b, sc, lab = boxes[:n], scores[:n], labels[:n]
    if np.any(np.diff(sc) > tol.score):
        raise Mismatch("detections are not sorted by score")
    if np.any(sc <= s.score_thresh - tol.score):
        raise Mismatch(f"a detection scores below the threshold {s.score_thresh}")

    # The reference's top-k candidates; any candidate within the tolerance of the cut may be in or out.
    num_classes = cand_scores.shape[1]
    flat = cand_scores.reshape(-1)
    k = min(s.topk, flat.size)
    order = np.argsort(-flat, kind="stable")
    cut = flat[order[k - 1]] if k < flat.size else -np.inf
    eligible = order[flat[order] >= cut - tol.score]  # could be among the top-k of the other runtime
    c_scores, c_labels = flat[eligible], eligible % num_classes
    c_boxes = cand_boxes[eligible // num_classes]

    # 1. every detection is a candidate (same class, score and box within the tolerance)
    matched = np.zeros(len(eligible), bool)
    for j in range(n):
        ok = ((c_labels == lab[j]) & (np.abs(c_scores - sc[j]) <= tol.score)
              & (np.abs(c_boxes - b[j]).max(axis=1) <= box_tol))
        if not ok.any():
            raise Mismatch(f"detection {j} (class {lab[j]}, score {sc[j]:.5f}, box {np.round(b[j], 2).tolist()}) "
                           "is not one of the reference's candidates")
        matched |= ok

    # 2. kept detections of one class do not suppress each other
    same = lab[:, None] == lab[None, :]
    iou = _iou(b, b)
    np.fill_diagonal(iou, 0.0)
    clash = np.argwhere(same & (iou > s.nms_thresh + tol.iou))
    if len(clash):
        j, m = clash[0]
        raise Mismatch(f"detections {j} and {m} (class {lab[j]}) overlap with IoU {iou[j, m]:.4f} > {s.nms_thresh}: "
                       "NMS should have removed one")

    # 3. every stronger candidate left out is explained: suppressed by a kept detection of its class that scores
    #    at least as high, or cut by top-k, or below the last score of a full list
    left_out = ~matched & (c_scores > s.score_thresh + tol.score) & (c_scores > cut + tol.score)
    if n == s.max_detections:
        left_out &= c_scores > sc[-1] + tol.score
    if not left_out.any():
        return
    idx = np.flatnonzero(left_out)
    overlap = _iou(c_boxes[idx], b)  # [left out, kept]
    suppressors = ((c_labels[idx, None] == lab[None, :]) & (overlap > s.nms_thresh - tol.iou)
                   & (sc[None, :] >= c_scores[idx, None] - tol.score))
    missing = idx[~suppressors.any(axis=1)]
    if len(missing):
        m = missing[np.argmax(c_scores[missing])]
        raise Mismatch(f"candidate (class {c_labels[m]}, score {c_scores[m]:.5f}, box "
                       f"{np.round(c_boxes[m], 2).tolist()}) is missing and no kept detection suppresses it")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes (as torchvision.ops.box_iou, in float64 numpy)."""
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def check_features(name: str, got, ref, tol: Tolerance = Tolerance()) -> None:
    """A stage's output features agree within ``tol.feature`` of the tensor's scale."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise Mismatch(f"feature {name} has shape {got.shape}, expected {ref.shape}")
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    worst = float(np.abs(got - ref).max()) if ref.size else 0.0
    if worst > tol.feature * scale:
        raise Mismatch(f"feature {name} differs by {worst:.3g} (tolerance {tol.feature * scale:.3g})")


def verify_graph(model, exit: int, onnx_bytes: bytes, images, tol: Tolerance = Tolerance()) -> None:
    """Run ``onnx_bytes`` (exported with candidates) in ONNX Runtime on ``images`` and check it against the
    PyTorch ``model``'s exit ``exit``: candidates within the tolerance, detections a valid NMS of them."""
    import torch

    from anytime.export.onnx import CANDIDATE_NAMES, INPUT_NAME, OUTPUT_NAMES

    with torch.no_grad():
        ref = [t.numpy() for t in model(images, exit=exit, with_candidates=True)]
    _verify(onnx_bytes, {INPUT_NAME: images.numpy()}, dict(zip(OUTPUT_NAMES + CANDIDATE_NAMES, ref)), model.cfg, tol)


def verify_features(model, stage: int, onnx_bytes: bytes, inputs: tuple, tol: Tolerance = Tolerance()) -> tuple:
    """Check stage ``stage``'s features graph against PyTorch on ``inputs`` (images for stage 1, the previous
    stage's PyTorch features after that): every level within the tolerance. Returns PyTorch's features, the
    inputs to check the next stage and this stage's head with."""
    import torch

    from anytime.export.onnx import features_io
    from anytime.model.retinanet import FeaturesModel

    names_in, names_out = features_io(model, stage)
    with torch.no_grad():
        ref = FeaturesModel(model, stage).eval()(*inputs)
    got = _run_graph(onnx_bytes, {n: x.numpy() for n, x in zip(names_in, inputs)})
    if sorted(got) != sorted(names_out):
        raise Mismatch(f"the graph's outputs {sorted(got)} are not the stage's {sorted(names_out)}")
    for name, r in zip(names_out, ref):
        check_features(name, got[name], r.numpy(), tol)
    return tuple(ref)


def verify_head(model, exit: int, onnx_bytes: bytes, feats: tuple, tol: Tolerance = Tolerance()) -> None:
    """Check exit ``exit``'s head graph (exported with candidates) against PyTorch on pyramid ``exit``'s
    PyTorch features: candidates within the tolerance, detections a valid NMS of them, as for an exit."""
    import torch

    from anytime.export.onnx import CANDIDATE_NAMES, OUTPUT_NAMES, head_io
    from anytime.model.retinanet import HeadModel

    names_in, _ = head_io(model)
    with torch.no_grad():
        ref = HeadModel(model, exit, with_candidates=True).eval()(*feats)
    _verify(onnx_bytes, {n: x.numpy() for n, x in zip(names_in, feats)},
            dict(zip(OUTPUT_NAMES + CANDIDATE_NAMES, [t.numpy() for t in ref])), model.cfg, tol)


def _run_graph(onnx_bytes: bytes, feed: dict) -> dict:
    """Every output of the graph on ``feed`` in ONNX Runtime, by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def _verify(onnx_bytes: bytes, feed: dict, ref: dict, cfg, tol: Tolerance) -> None:
    got = _run_graph(onnx_bytes, feed)
    if sorted(got) != sorted(ref):
        raise Mismatch(f"the graph's outputs {sorted(got)} are not the model's {sorted(ref)}")
    check_candidates(got["candidate_scores"], got["candidate_boxes"], ref["candidate_scores"], ref["candidate_boxes"],
                     cfg.image_size, tol)
    detections = dict(boxes=got["boxes"], scores=got["scores"], labels=got["labels"], count=got["num_detections"])
    check_nms(detections, ref["candidate_scores"], ref["candidate_boxes"], NmsSettings.of(cfg), tol)
