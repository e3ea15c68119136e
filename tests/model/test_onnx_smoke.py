"""Every exit exports to ONNX and gives PyTorch's detections (up to near-ties) (a smoke test; full export lives in tests/export)."""

import onnxruntime as ort
import pytest
import torch

from anytime.export.onnx import export_exit
from anytime.model import AnytimeRetinaNet
from anytime.testing import assert_valid_detections, tiny_config


@pytest.mark.parametrize("residual", [False, True])
def test_every_exit_exports_and_matches_pytorch(residual):
    torch.manual_seed(0)
    model = AnytimeRetinaNet(tiny_config(repeats=3, score_thresh=0.2, residual_pyramids=residual)).eval()
    torch.nn.init.normal_(model.heads[0].cls_logits.weight, std=0.3)  # spread scores so detections exist
    torch.nn.init.zeros_(model.heads[0].cls_logits.bias)
    images = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    for k in range(1, 4):
        session = ort.InferenceSession(export_exit(model, k), providers=["CPUExecutionProvider"])
        for batch in (images, images[:1]):  # the batch axis is dynamic
            boxes, scores, labels, count = session.run(None, {"images": batch.numpy()})
            assert count.min() > 0
            assert_valid_detections(model, batch, k, dict(boxes=boxes, scores=scores, labels=labels, count=count))
    assert not model.training
