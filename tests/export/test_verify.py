"""The export check holds on any CPU: near-ties may flip, real differences may not pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from anytime.export.onnx import export_exit
from anytime.export.verify import Mismatch, NmsSettings, Tolerance, check_candidates, check_nms, verify_graph
from anytime.testing import random_detector, tiny_config

SETTINGS = NmsSettings(score_thresh=0.05, nms_thresh=0.5, topk=1000, max_detections=100, image_size=128)


def _nms(scores: np.ndarray, boxes: np.ndarray, s: NmsSettings = SETTINGS) -> dict:
    """Reference greedy NMS of one image's candidates (scores [N, K], boxes [N, 4]) into padded outputs."""
    n, k = scores.shape
    flat = torch.from_numpy(scores.reshape(-1)).float()
    top, idx = flat.topk(min(s.topk, flat.numel()))
    b = torch.from_numpy(boxes).float()[idx // k]
    labels = idx % k
    keep = batched_nms(b, top, labels, s.nms_thresh)
    keep = keep[top[keep] > s.score_thresh][: s.max_detections]
    d = s.max_detections
    out = dict(boxes=np.zeros((1, d, 4), np.float32), scores=np.zeros((1, d), np.float32),
               labels=np.zeros((1, d), np.int64), count=np.array([len(keep)]))
    out["boxes"][0, : len(keep)] = b[keep].numpy()
    out["scores"][0, : len(keep)] = top[keep].numpy()
    out["labels"][0, : len(keep)] = labels[keep].numpy()
    return out


def _near_tie():
    """Two class-0 candidates that overlap (IoU 0.8) with scores 1e-7 apart, plus a lone class-1 candidate."""
    scores = np.array([[0.9000001, 0.0], [0.9, 0.0], [0.0, 0.7]])
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [80, 80, 100, 110]], dtype=np.float64)
    return scores, boxes


def test_a_flipped_near_tie_is_accepted():
    scores, boxes = _near_tie()
    ref = _nms(scores, boxes)
    assert ref["count"][0] == 2 and ref["boxes"][0, 0, 0] == 10
    flipped = scores.copy()
    flipped[[0, 1], 0] = flipped[[1, 0], 0]  # another CPU's last bit: the other box wins
    other = _nms(flipped, boxes)
    assert other["boxes"][0, 0, 0] == 12  # a one-to-one comparison of the two outputs would fail here
    check_nms(other, scores[None], boxes[None], SETTINGS)
    check_nms(ref, scores[None], boxes[None], SETTINGS)


def _shift_box(d):
    d["boxes"][0, 1] += 3.0


def _lower_score(d):
    d["scores"][0, 1] -= 0.01


def _relabel(d):
    d["labels"][0, 1] = 0


def _drop_count(d):
    d["count"][0] = 1


@pytest.mark.parametrize("corrupt, fragment", [
    (_shift_box, "not one of the reference's candidates"),
    (_lower_score, "not one of the reference's candidates"),
    (_relabel, "not one of the reference's candidates"),
    (_drop_count, "rows past the count"),
])
def test_real_differences_are_caught(corrupt, fragment):
    scores, boxes = _near_tie()
    got = _nms(scores, boxes)
    corrupt(got)
    with pytest.raises(Mismatch, match=fragment):
        check_nms(got, scores[None], boxes[None], SETTINGS)


def test_a_missing_detection_and_a_kept_duplicate_are_caught():
    scores, boxes = _near_tie()
    got = _nms(scores, boxes)
    got["count"][0] = 1
    got["boxes"][0, 1], got["scores"][0, 1], got["labels"][0, 1] = 0, 0, 0
    with pytest.raises(Mismatch, match="missing and no kept detection suppresses it"):
        check_nms(got, scores[None], boxes[None], SETTINGS)
    both = _nms(scores, boxes, NmsSettings(0.05, 0.95, 1000, 100, 128))  # a loose NMS keeps both boxes
    with pytest.raises(Mismatch, match="NMS should have removed one"):
        check_nms(both, scores[None], boxes[None], SETTINGS)


def test_candidates_compare_within_tolerance_only():
    rng = np.random.default_rng(0)
    s, b = rng.random((2, 50, 3)), rng.random((2, 50, 4)) * 128
    check_candidates(s + 1e-5, b + 1e-3, s, b, 128)
    with pytest.raises(Mismatch, match="pre-NMS score"):
        check_candidates(s + 2e-3, b, s, b, 128)
    with pytest.raises(Mismatch, match="decoded box"):
        check_candidates(s, b + 1.0, s, b, 128)


def test_pytorch_output_jittered_in_the_last_bits_still_verifies():
    """What another CPU does: candidates moved by ~1e-6, NMS rerun. Detections may differ; the check passes."""
    model = random_detector(tiny_config(repeats=2, width=32, score_thresh=0.97), logit_std=0.1)
    images = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images, exit=2, with_candidates=True)
    scores, boxes = out[4].numpy().astype(np.float64), out[5].numpy().astype(np.float64)
    settings = NmsSettings.of(model.cfg)
    rng = np.random.default_rng(0)
    for i in range(2):
        jittered = scores[i] + rng.normal(scale=1e-6, size=scores[i].shape)
        check_nms(_nms(jittered, boxes[i], settings), scores[i:i + 1], boxes[i:i + 1], settings)


def test_verify_graph_accepts_the_export_and_rejects_another_models_graph():
    model = random_detector(tiny_config(repeats=2, score_thresh=0.9), logit_std=0.1)
    images = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    verify_graph(model, 2, export_exit(model, 2, with_candidates=True), images)
    other = random_detector(tiny_config(repeats=2, score_thresh=0.9), seed=1, logit_std=0.1)
    with pytest.raises(Mismatch, match="pre-NMS score"):
        verify_graph(model, 2, export_exit(other, 2, with_candidates=True), images, Tolerance())


def test_the_served_graph_is_the_verified_graph_without_the_candidate_outputs():
    """Pruning keeps every node the detections need, including what the NMS branch (an ONNX If) reads from
    outside its subgraph, so the served file computes exactly what was verified."""
    import onnx
    import onnxruntime as ort

    from anytime.export.onnx import OUTPUT_NAMES, served_graph

    model = random_detector(tiny_config(repeats=2, score_thresh=0.9), logit_std=0.1)
    full = export_exit(model, 2, with_candidates=True)
    served = served_graph(full)
    graph = onnx.load_from_string(served).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert any(n.op_type == "If" for n in graph.node)  # batched NMS, as exported
    x = torch.randint(0, 256, (3, 3, 128, 128), generator=torch.Generator().manual_seed(2), dtype=torch.uint8).numpy()
    want = ort.InferenceSession(full).run(list(OUTPUT_NAMES), {"images": x})
    got = ort.InferenceSession(served).run(None, {"images": x})
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
