"""Pyramid networks: a NAS-FPN built from a ``PyramidSpec``, and the FPN baseline."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from anytime.model.cells import MergingCell
from anytime.model.spec import PyramidSpec


class PyramidNetwork(nn.Module):
    """One NAS-FPN pyramid network: the spec's merging cells, unrolled at run time from data."""

    def __init__(self, spec: PyramidSpec, channels: int, separable: bool = False,
                 dropblock_prob: float = 0.0, dropblock_size: int = 3):
        super().__init__()
        self.spec = spec
        node_levels = spec.node_levels()
        self.cells = nn.ModuleList(
            MergingCell(c.op, c.level, (node_levels[c.inputs[0]], node_levels[c.inputs[1]]), channels,
                        separable, dropblock_prob, dropblock_size)
            for c in spec.cells
        )
        self.unused_into = self._plan_unused_features()

    def _plan_unused_features(self) -> list[list[int]]:
        """For each cell, the nodes summed into it by the output rule (§3.1, after [44]).

        When an output cell is built, every earlier node of the same level that no cell has consumed yet is
        added to it (before its ReLU-conv-BN, as in the TensorFlow reference). For the discovered 7-cell
        architecture this adds the stage inputs P5 and P7 to the P5 and P7 outputs.
        """
        levels = self.spec.node_levels()
        used = [0] * len(levels)
        plan: list[list[int]] = []
        for i, cell in enumerate(self.spec.cells):
            node = len(self.spec.levels) + i
            for x in cell.inputs:
                used[x] += 1
            extra = []
            if cell.output:
                for j in range(node):
                    if used[j] == 0 and levels[j] == cell.level:
                        used[j] += 1
                        extra.append(j)
            plan.append(extra)
        return plan

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        nodes = list(inputs)
        outputs: dict[int, torch.Tensor] = {}
        for cell, spec, extra in zip(self.cells, self.spec.cells, self.unused_into):
            merged = cell.combine(nodes[spec.inputs[0]], nodes[spec.inputs[1]])
            for j in extra:
                merged = merged + nodes[j]
            new = cell.finish(merged)
            nodes.append(new)
            if spec.output:
                outputs[spec.level] = new
        return [outputs[level] for level in self.spec.levels]


class InputProjection(nn.Module):
    """Backbone C3-C5 to the pyramid width (1x1 conv + BN where channels differ); C6, C7 by max pooling.

    The paper makes C6 and C7 by stride-2 and stride-4 max pooling of C5; we pool the projected C5 so the
    extra levels cost no parameters. A pyramid may use any ascending levels from P3 up (P4-P7, say): only the
    backbone features it needs are projected, and C5 also when a coarser level is pooled from it.
    """

    BACKBONE_LEVELS = (3, 4, 5)  # strides 8, 16, 32: what the backbones return

    def __init__(self, in_channels: list[int], channels: int, levels: tuple[int, ...]):
        super().__init__()
        self.levels = tuple(levels)
        if min(self.levels) < self.BACKBONE_LEVELS[0]:
            raise ValueError(f"pyramid levels {list(self.levels)} start below P3: the backbone's finest feature is "
                             "C3 (stride 8)")
        needed = {lv for lv in self.levels if lv <= 5} | ({5} if max(self.levels) > 5 else set())
        self.taken = [i for i, lv in enumerate(self.BACKBONE_LEVELS) if lv in needed]  # backbone outputs used
        self.proj = nn.ModuleList(
            nn.Identity() if in_channels[i] == channels
            else nn.Sequential(nn.Conv2d(in_channels[i], channels, 1, bias=False), nn.BatchNorm2d(channels))
            for i in self.taken
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        projected = {self.BACKBONE_LEVELS[i]: p(feats[i]) for p, i in zip(self.proj, self.taken)}
        out = []
        for level in self.levels:
            if level in projected:
                out.append(projected[level])
            else:
                k = 2 ** (level - 5)
                out.append(nn.functional.max_pool2d(projected[5], kernel_size=k, stride=k, ceil_mode=True))
        return out


class FPNBaseline(nn.Module):
    """The RetinaNet FPN baseline of Table 1, as torchvision builds it (P6, P7 by stride-2 convs from P5)."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())
