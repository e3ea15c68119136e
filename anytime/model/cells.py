"""Merging cells (NAS-FPN §3.1, Figures 3-4): resample two features to one level, combine, ReLU-conv-BN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DropBlock2d


def resample(x: torch.Tensor, from_level: int, to_level: int) -> torch.Tensor:
    """Nearest-neighbour upsampling to a finer level, max pooling to a coarser one (paper §3.1)."""
    if to_level == from_level:
        return x
    if to_level < from_level:
        return F.interpolate(x, scale_factor=float(2 ** (from_level - to_level)), mode="nearest")
    k = 2 ** (to_level - from_level)
    return F.max_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)


def global_pool_op(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Figure 4b: a global pool of the coarser input, through a sigmoid, gates the finer one; then add.

    Follows the paper and the TensorFlow reference (global *max* pool of the coarser input). mmdetection
    instead average-pools the finer input; we do not.
    """
    gate = torch.sigmoid(torch.amax(coarse, dim=(2, 3), keepdim=True))
    return coarse + fine * gate


def conv_bn(channels: int, separable: bool) -> nn.Sequential:
    """3x3 conv + BN; depthwise-separable for NAS-FPN-Lite (SSDLite-style)."""
    if separable:
        conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
    else:
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(channels))


class MergingCell(nn.Module):
    def __init__(self, op: str, level: int, input_levels: tuple[int, int], channels: int,
                 separable: bool = False, dropblock_prob: float = 0.0, dropblock_size: int = 3):
        super().__init__()
        self.op = op
        self.level = level
        self.input_levels = input_levels
        self.conv = conv_bn(channels, separable)
        # DropBlock after the BN of every pyramid conv (paper §4.4); inactive in eval mode.
        self.dropblock = DropBlock2d(dropblock_prob, dropblock_size) if dropblock_prob > 0 else nn.Identity()

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        la, lb = self.input_levels
        a, b = resample(a, la, self.level), resample(b, lb, self.level)
        if self.op == "sum":
            return a + b
        # global pooling: the input from the coarser level (larger level number) provides the gate
        return global_pool_op(a, b) if la >= lb else global_pool_op(b, a)

    def finish(self, merged: torch.Tensor) -> torch.Tensor:
        return self.dropblock(self.conv(F.relu(merged)))
