"""RetinaNet with stacked pyramid networks and an exit (class + box head) after each of them."""

from __future__ import annotations

import torch
from torch import nn

from anytime.config import ModelConfig
from anytime.model.anchors import make_anchors
from anytime.model.backbone import build_backbone
from anytime.model.head import RetinaHead
from anytime.model.loss import assign, exit_loss
from anytime.model.postprocess import candidates, postprocess
from anytime.model.pyramid import FPNBaseline, InputProjection, PyramidNetwork

# Images enter the model as RGB float 0..255; normalisation lives in the graph so exported models take raw pixels.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class AnytimeRetinaNet(nn.Module):
    """Exits are numbered 1..num_exits; exit k runs the backbone, pyramid networks 1..k and head k only."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.levels = cfg.levels
        self.num_exits = cfg.num_exits
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = build_backbone(cfg.backbone, cfg.backbone_width, cfg.backbone_weights)
        in_ch = self.backbone.out_channels
        if cfg.pyramid == "fpn":
            self.input_proj = nn.Identity()
            self.pyramids = nn.ModuleList([FPNBaseline(in_ch, cfg.width)])
        else:
            spec = cfg.architecture()
            self.input_proj = InputProjection(in_ch, cfg.width, spec.levels)
            # Stacked pyramid networks never share weights (paper §3, "R-50 7 @ 256").
            self.pyramids = nn.ModuleList(
                PyramidNetwork(spec, cfg.width, cfg.separable, cfg.dropblock_prob, cfg.dropblock_size)
                for _ in range(cfg.repeats)
            )
        num_anchors = cfg.anchor_scales * len(cfg.aspect_ratios)
        head_args = dict(channels=cfg.width, num_anchors=num_anchors, num_classes=cfg.num_classes,
                         num_convs=cfg.head_convs, num_levels=len(self.levels), separable=cfg.separable)
        if cfg.shared_head:
            self.heads = nn.ModuleList([RetinaHead(num_exits=self.num_exits, **head_args)])
        else:
            self.heads = nn.ModuleList(RetinaHead(num_exits=1, **head_args) for _ in range(self.num_exits))
        anchors = make_anchors(cfg.image_size, self.levels, cfg.anchor_scales, cfg.aspect_ratios, cfg.anchor_size)
        self.register_buffer("anchors", anchors, persistent=False)

    def set_image_size(self, size: int) -> "AnytimeRetinaNet":
        """Serve (or evaluate) square inputs of ``size`` px with the same weights.

        Every layer is convolutional, so only the anchors and the input check depend on the size: one set of
        weights runs at 128, 256 or 384 px, each a different point of cost against accuracy (the paper's Table 3
        and Figure 9 vary input size with depth). ``size`` must divide by the pyramid's largest stride, as at
        construction (``ModelConfig.validate``)."""
        cfg = self.cfg.replace(image_size=int(size)).validate()
        anchors = make_anchors(cfg.image_size, self.levels, cfg.anchor_scales, cfg.aspect_ratios, cfg.anchor_size)
        self.cfg = cfg
        self.anchors = anchors.to(self.anchors.device)
        return self

    # -- structure -------------------------------------------------------------------------------------
    def _head(self, exit: int) -> tuple[RetinaHead, int]:
        """The head module of an exit and the norm slot it uses inside that head."""
        self._check_exit(exit)
        return (self.heads[0], exit - 1) if self.cfg.shared_head else (self.heads[exit - 1], 0)

    def _check_exit(self, exit: int) -> None:
        if not 1 <= exit <= self.num_exits:
            raise ValueError(f"exit {exit} does not exist: this model has exits 1..{self.num_exits}")

    def parameters_for_exit(self, exit: int) -> list[nn.Parameter]:
        """Every parameter that running up to ``exit`` touches: backbone, pyramids 1..exit, head ``exit``."""
        head, slot = self._head(exit)
        params = list(self.backbone.parameters()) + list(self.input_proj.parameters())
        for p in self.pyramids[:exit]:
            params += list(p.parameters())
        return params + head.parameters_for(slot)

    # -- forward pieces: the stages of anytime execution -------------------------------------------------
    def stem(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone and input projection: the first pyramid network's inputs, one per level."""
        if images.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"expected images of {self.cfg.image_size}x{self.cfg.image_size}, got {tuple(images.shape[-2:])}")
        return self.input_proj(self.backbone((images.float() - self.pixel_mean) / self.pixel_std))

    def pyramid(self, k: int, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pyramid network ``k`` (1-based) on the previous one's features (plus them, with residual pyramids)."""
        new = self.pyramids[k - 1](feats)
        return [a + b for a, b in zip(feats, new)] if self.cfg.residual_pyramids else new

    def head_outputs(self, k: int, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exit ``k``'s raw predictions on pyramid ``k``'s features: logits [B, N, K], box deltas [B, N, 4]."""
        head, slot = self._head(k)
        return head(feats, slot)

    def exit_outputs(self, images: torch.Tensor, exits: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Raw head outputs {exit: (logits [B,N,K], deltas [B,N,4])}; runs pyramids only up to max(exits)."""
        for e in exits:
            self._check_exit(e)
        feats = self.stem(images)
        out = {}
        for k in range(1, max(exits) + 1):
            feats = self.pyramid(k, feats)
            if k in exits:
                out[k] = self.head_outputs(k, feats)
        return out

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Deep supervision: the weighted sum over every exit's focal + box loss (paper §3.2)."""
        exits = list(range(1, self.num_exits + 1))
        outputs = self.exit_outputs(images, exits)
        t = assign(self.anchors, targets)
        result, total = {}, images.new_zeros(())
        for k, w in zip(exits, self.cfg.exit_weight_list()):
            cls, box = exit_loss(*outputs[k], t, self.cfg.focal_alpha, self.cfg.focal_gamma, self.cfg.box_loss_beta)
            result[f"exit{k}/cls"], result[f"exit{k}/box"] = cls.detach(), box.detach()
            total = total + w * (cls + box)
        result["loss"] = total
        return result

    def _post(self, logits: torch.Tensor, deltas: torch.Tensor):
        c = self.cfg
        return postprocess(logits, deltas, self.anchors, c.image_size, c.score_thresh, c.nms_thresh,
                           c.topk_candidates, c.detections_per_img)

    def _detections(self, logits: torch.Tensor, deltas: torch.Tensor, with_candidates: bool) -> tuple:
        """Padded detections of raw head outputs, and with ``with_candidates`` every anchor's scores and boxes."""
        detections = tuple(self._post(logits, deltas))
        if with_candidates:
            return (*detections, *candidates(logits, deltas, self.anchors, self.cfg.image_size))
        return detections

    def forward(self, images: torch.Tensor, exit: int | None = None, with_candidates: bool = False):
        """Padded detections of one exit (deepest by default): boxes, scores, labels, count. Export uses this.

        ``with_candidates`` appends every anchor's scores [B, N, K] and decoded boxes [B, N, 4]: what NMS chose
        from, for checking an exported graph against this one.
        """
        exit = exit or self.num_exits
        return self._detections(*self.exit_outputs(images, [exit])[exit], with_candidates)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, exits: list[int] | None = None) -> dict[int, list[dict]]:
        """{exit: [per-image dict(boxes, scores, labels)]}, sharing the backbone and pyramids across exits."""
        exits = exits or list(range(1, self.num_exits + 1))
        result = {}
        for k, (logits, deltas) in self.exit_outputs(images, exits).items():
            boxes, scores, labels, count = self._post(logits, deltas)
            result[k] = [dict(boxes=boxes[i, :n], scores=scores[i, :n], labels=labels[i, :n])
                         for i, n in enumerate(count.tolist())]
        return result


class FeaturesModel(nn.Module):
    """Stage ``k``'s features: what exit ``k`` adds to exit ``k - 1`` before its head.

    Stage 1 takes images and runs the backbone, the input projection and pyramid network 1; stage k > 1 takes
    pyramid k-1's features and runs pyramid network k. Returns the features, one tensor per level.

    Progressive execution runs a stage's head (``HeadModel``) separately, and only when the exit is wanted: a
    RetinaNet head runs on all five levels and costs about three of the default model's pyramid networks, so a
    request that goes on to a deeper exit would waste it (``anytime info``'s "every exit on the way" column).
    """

    def __init__(self, model: AnytimeRetinaNet, stage: int):
        super().__init__()
        model._check_exit(stage)
        self.model, self.stage = model, stage

    def forward(self, *inputs: torch.Tensor):
        m = self.model
        feats = m.stem(inputs[0]) if self.stage == 1 else list(inputs)
        return tuple(m.pyramid(self.stage, feats))


class HeadModel(nn.Module):
    """Exit ``k``'s head on pyramid ``k``'s features: padded detections (boxes, scores, labels, count), and with
    ``with_candidates`` every anchor's scores and boxes (verification only). ``FeaturesModel`` 1..k and then
    ``HeadModel`` k compute exactly exit k."""

    def __init__(self, model: AnytimeRetinaNet, exit: int, with_candidates: bool = False):
        super().__init__()
        model._check_exit(exit)
        self.model, self.exit, self.with_candidates = model, exit, with_candidates

    def forward(self, *feats: torch.Tensor):
        return self.model._detections(*self.model.head_outputs(self.exit, list(feats)), self.with_candidates)


class ExitModel(nn.Module):
    """One exit as a standalone module (what export and profiling run)."""

    def __init__(self, model: AnytimeRetinaNet, exit: int, with_candidates: bool = False):
        super().__init__()
        model._check_exit(exit)
        self.model, self.exit, self.with_candidates = model, exit, with_candidates

    def forward(self, images: torch.Tensor):
        return self.model(images, self.exit, self.with_candidates)
