"""Our box coding, anchor matching and stage extraction equal torchvision's private helpers they replace."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import box_iou

from anytime.model.anchors import decode_boxes, encode_boxes, make_anchors
from anytime.model.backbone import Stages, build_backbone
from anytime.model.loss import BACKGROUND, IGNORED, match

ANCHORS = make_anchors(256, (3, 4, 5, 6, 7), anchor_size=2.0)


def test_decoding_inverts_encoding_and_equals_torchvisions_box_coder():
    from torchvision.models.detection._utils import BoxCoder  # private: an oracle here, never a dependency

    g = torch.Generator().manual_seed(0)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    deltas = torch.randn(ANCHORS.shape[0], 4, generator=g)
    boxes = decode_boxes(deltas, ANCHORS)
    assert torch.equal(boxes, coder.decode_single(deltas, ANCHORS))
    assert torch.allclose(encode_boxes(boxes, ANCHORS), deltas, atol=1e-4)
    assert torch.equal(encode_boxes(boxes, ANCHORS), coder.encode_single(boxes, ANCHORS))
    wild = torch.full((1, 4), 50.0)
    assert torch.isfinite(decode_boxes(wild, ANCHORS[:1])).all()  # clipped before exp


def test_matching_equals_torchvisions_matcher_with_low_quality_matches():
    from torchvision.models.detection._utils import Matcher  # private: an oracle here, never a dependency

    oracle = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        xy = torch.rand(6, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 60 + 4], 1)
        iou = box_iou(boxes, ANCHORS)
        assert torch.equal(match(iou), oracle(iou))
    m = match(torch.tensor([[0.9, 0.45, 0.1, 0.3]]))
    assert m.tolist() == [0, IGNORED, BACKGROUND, BACKGROUND]
    assert match(torch.tensor([[0.3, 0.2]])).tolist() == [0, BACKGROUND]  # a box keeps its best anchor


@pytest.mark.parametrize("name", ["resnet10", "mobilenet_v2"])
def test_stages_return_what_torchvisions_layer_getter_returns_with_the_same_parameter_names(name):
    from torchvision.models._utils import IntermediateLayerGetter  # private: an oracle here

    torch.manual_seed(0)
    backbone = build_backbone(name, 0.25 if name == "resnet10" else 1.0)
    body = backbone.body
    assert isinstance(body, Stages)
    names = {"resnet10": ("layer2", "layer3", "layer4"), "mobilenet_v2": ("6", "13", "18")}[name]
    oracle = IntermediateLayerGetter(torch.nn.Sequential(OrderedDict(body.items())), {n: n for n in names})
    x = torch.randn(1, 3, 128, 128)
    body.eval(), oracle.eval()
    with torch.no_grad():
        ours, theirs = body(x), list(oracle(x).values())
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)) and len(ours) == 3
    assert list(body.state_dict()) == list(oracle.state_dict())
