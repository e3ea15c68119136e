"""RetinaNet class and box subnets (Lin et al. 2017), shared across levels and, by default, across exits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Tower(nn.Module):
    """``num_convs`` 3x3 convs, each followed by BN and ReLU (the paper puts BN after every conv).

    Conv weights are shared by all levels and all exits that use this tower; BN keeps separate statistics
    per (exit, level), because features from different depths and strides do not share a distribution.
    """

    def __init__(self, channels: int, num_convs: int, num_exits: int, num_levels: int, separable: bool):
        super().__init__()
        self.num_convs, self.num_levels = num_convs, num_levels
        self.convs = nn.ModuleList(_conv3x3(channels, channels, separable) for _ in range(num_convs))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_exits * num_convs * num_levels))

    def norm(self, exit_slot: int, conv: int, level: int) -> nn.BatchNorm2d:
        return self.norms[(exit_slot * self.num_convs + conv) * self.num_levels + level]

    def norms_for(self, exit_slot: int) -> list[nn.BatchNorm2d]:
        n = self.num_convs * self.num_levels
        return list(self.norms[exit_slot * n : (exit_slot + 1) * n])

    def forward(self, x: torch.Tensor, exit_slot: int, level: int) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(self.norm(exit_slot, i, level)(conv(x)))
        return x


def _conv3x3(cin: int, cout: int, separable: bool, bias: bool = False) -> nn.Module:
    if separable:
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=bias))
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class RetinaHead(nn.Module):
    """Class and box predictions for every anchor of every level, for one or more exits."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_convs: int, num_exits: int,
                 num_levels: int, separable: bool = False, prior_prob: float = 0.01):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_tower = Tower(channels, num_convs, num_exits, num_levels, separable)
        self.box_tower = Tower(channels, num_convs, num_exits, num_levels, separable)
        self.cls_logits = _conv3x3(channels, num_anchors * num_classes, separable, bias=True)
        self.box_deltas = _conv3x3(channels, num_anchors * 4, separable, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.cls_logits[-1] if separable else self.cls_logits
        nn.init.constant_(last.bias, -math.log((1 - prior_prob) / prior_prob))  # focal-loss prior (RetinaNet §4.1)

    def parameters_for(self, exit_slot: int) -> list[nn.Parameter]:
        """The parameters that running this exit touches (shared convs plus that exit's norms)."""
        mods = [self.cls_tower.convs, self.box_tower.convs, self.cls_logits, self.box_deltas,
                *self.cls_tower.norms_for(exit_slot), *self.box_tower.norms_for(exit_slot)]
        return [p for m in mods for p in m.parameters()]

    def forward(self, feats: list[torch.Tensor], exit_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits [B, N, K] and box deltas [B, N, 4], anchors ordered level, y, x, anchor."""
        cls_out, box_out = [], []
        for level, f in enumerate(feats):
            b, _, h, w = f.shape
            c = self.cls_logits(self.cls_tower(f, exit_slot, level))
            r = self.box_deltas(self.box_tower(f, exit_slot, level))
            cls_out.append(c.view(b, self.num_anchors, self.num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, self.num_classes))
            box_out.append(r.view(b, self.num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return torch.cat(cls_out, 1), torch.cat(box_out, 1)
