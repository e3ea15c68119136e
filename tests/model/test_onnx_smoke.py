"""Every exit exports to ONNX and gives PyTorch's detections (a smoke test; full export lives in tests/export)."""

import onnxruntime as ort
import pytest
import torch

from anytime.export.onnx import export_exit
from anytime.model import AnytimeRetinaNet
from anytime.testing import assert_same_detections, tiny_config


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
            with torch.no_grad():
                ref = [t.numpy() for t in model(batch, exit=k)]
            assert count.min() > 0
            assert_same_detections(dict(boxes=boxes, scores=scores, labels=labels, count=count),
                                   dict(boxes=ref[0], scores=ref[1], labels=ref[2], count=ref[3]))
    assert not model.training
