"""Backbones from torchvision's builders, returning C3, C4, C5 (strides 8, 16, 32).

Random initialisation by default; weights come only from a local file, never a download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet

# name -> (block, layers); ResNet-10 is the paper's proxy-task backbone (§4.2).
_RESNETS = {
    "resnet10": (resnet.BasicBlock, [1, 1, 1, 1]),
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (resnet.Bottleneck, [3, 4, 23, 3]),
}
BACKBONES = set(_RESNETS) | {"mobilenet_v2"}


class _SlimResNet(resnet.ResNet):
    """torchvision's ResNet with every stage's width scaled, for CPU-sized proxy models."""

    def __init__(self, block, layers, width: float):
        super().__init__(block, layers)
        planes = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class Stages(nn.ModuleDict):
    """The children of a network up to its last returned stage, run in order; returns the named stages' outputs.

    What torchvision's private ``IntermediateLayerGetter`` does, and with the same parameter names (the
    children keep theirs), so checkpoints stay compatible; the classifier after the last stage is dropped.
    """

    def __init__(self, net: nn.Module, returned: tuple[str, ...]):
        children = {}
        for name, module in net.named_children():
            children[name] = module
            if name == returned[-1]:
                break
        super().__init__(children)
        self.returned = returned

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for name, module in self.items():
            x = module(x)
            if name in self.returned:
                out.append(x)
        return out


class Backbone(nn.Module):
    """Wraps a classification network and exposes ``out_channels`` for C3, C4, C5."""

    def __init__(self, body: nn.Module, out_channels: list[int]):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def build_backbone(name: str, width: float = 1.0, weights: str | None = None) -> Backbone:
    if name in _RESNETS:
        block, layers = _RESNETS[name]
        net = resnet.ResNet(block, layers) if width == 1.0 else _SlimResNet(block, layers, width)
        if weights:
            _load_weights(net, weights)
        body = Stages(net, ("layer2", "layer3", "layer4"))
        channels = [_stage_channels(net.layer2), _stage_channels(net.layer3), _stage_channels(net.layer4)]
        return Backbone(body, channels)
    if name == "mobilenet_v2":
        net = mobilenet_v2(weights=None)
        if weights:
            _load_weights(net, weights)
        # features[6] ends stride 8 (32 ch), features[13] stride 16 (96 ch), features[18] stride 32 (1280 ch).
        body = Stages(net.features, ("6", "13", "18"))
        return Backbone(body, [32, 96, 1280])
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(sorted(BACKBONES))}")


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def _load_weights(net: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"backbone weights file not found: {p}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    if missing or unexpected:
        raise ValueError(f"{p}: backbone weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
