"""Helpers shared by the test-suite and benchmarks: tiny configurations and detection comparison."""

from __future__ import annotations

import numpy as np

from anytime.config import ModelConfig


def tiny_config(**changes) -> ModelConfig:
    """A model small enough to train and export in a second on one CPU core."""
    base = dict(backbone="resnet10", backbone_width=0.25, pyramid="nasfpn", repeats=2, width=16,
                image_size=128, num_classes=3, head_convs=2)
    base.update(changes)
    return ModelConfig(**base)


def assert_same_detections(a: dict, b: dict, tol: float = 1e-3) -> None:
    """Two padded detection sets (boxes, scores, labels, count as numpy) are the same, up to ``tol``.

    Detections are matched one-to-one (same label, boxes and scores within tol), so two runtimes that order
    near-tied scores differently still compare equal; a missing or extra detection fails.
    """
    a = {k: np.asarray(v) for k, v in a.items()}
    b = {k: np.asarray(v) for k, v in b.items()}
    assert a["count"].tolist() == b["count"].tolist(), f"detection counts differ: {a['count']} vs {b['count']}"
    for i, n in enumerate(a["count"].tolist()):
        free = np.ones(n, dtype=bool)
        for j in range(n):
            ok = (free & (b["labels"][i, :n] == a["labels"][i, j])
                  & (np.abs(b["scores"][i, :n] - a["scores"][i, j]) <= tol)
                  & (np.abs(b["boxes"][i, :n] - a["boxes"][i, j]).max(-1) <= tol))
            assert ok.any(), (f"image {i}: detection {j} (label {a['labels'][i, j]}, score {a['scores'][i, j]:.5f}, "
                              f"box {a['boxes'][i, j]}) has no match")
            free[np.argmax(ok)] = False
