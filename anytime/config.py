"""Model configuration as plain data, with named presets.

A ``ModelConfig`` fully determines the network (and therefore a checkpoint's shape); it is saved inside every
checkpoint and manifest, so anything that rebuilds a model needs only this record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from anytime.files import read_json

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot describe a model; the message names the field."""


def known_fields(cls, d: dict, what: str) -> dict:
    """``d`` restricted to the dataclass's fields; any other key (but ``_comment``) is a ConfigError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - {"_comment"})
    if unknown:
        raise ConfigError(f"unknown {what} config field(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return {k: v for k, v in d.items() if k in names}


def exit_weights_at_depth(weights: list[float] | None, n: int) -> list[float] | None:
    """A recipe's deep-supervision weights carried to a model with ``n`` pyramid networks: each exit takes the
    weight that the recipe gives its *relative* depth (linear between the recipe's exits), then all are scaled to
    the recipe's mean weight, so the total loss scale and hence the effective learning rate stay the recipe's.
    The default [0.4, 0.8, 1.2, 1.6] becomes [1.0] for one pyramid and [0.67, 1.33] for two. Used to train one
    model per depth, as the paper's Figure 8a does."""
    import numpy as np

    if weights is None:
        return None
    if n < 1:
        raise ConfigError(f"a model needs at least one pyramid network, got {n}")
    w = np.asarray(weights, dtype=float)
    at = np.interp(np.arange(1, n + 1) / n, np.arange(1, len(w) + 1) / len(w), w)
    return [round(float(x), 4) for x in at * (w.mean() / at.mean())]


def with_pyramid(model: dict, pyramid: str) -> dict:
    """A model config section (a dict, as written) with ``pyramid`` swapped in. An embedded architecture
    (``pyramid_spec``, from a trained run's own config) goes with it, or it would stand in for the new one."""
    return {**model, "pyramid": pyramid, "pyramid_spec": None}


@dataclass
class ModelConfig:
    num_classes: int = 10
    image_size: int = 256  # square network input; must be divisible by 2**max(levels)
    class_names: list[str] | None = None

    # backbone
    backbone: str = "resnet10"  # resnet10/18/34/50/101, mobilenet_v2
    backbone_width: float = 1.0  # channel multiplier for ResNets (the proxy task's slim ResNet-10 uses < 1)
    backbone_weights: str | None = None  # optional local state_dict file; nothing is ever downloaded

    # feature pyramid
    pyramid: str = "nasfpn"  # built-in architecture name, a JSON file, or "fpn" (the FPN baseline)
    # The architecture itself (PyramidSpec.to_dict()). Training fills it in, so that a checkpoint or an eval report
    # rebuilds its model without the file ``pyramid`` named (a search's best.json, on a machine long gone). When
    # set, it is the architecture and ``pyramid`` only names where it came from.
    pyramid_spec: dict | None = None
    repeats: int = 3  # stacked pyramid networks = exits
    width: int = 64  # channels inside the pyramid and heads
    separable: bool = False  # depthwise-separable convs (NAS-FPN-Lite)
    dropblock_prob: float = 0.0  # DropBlock after the pyramid BN layers (paper §4.4); 0 disables
    dropblock_size: int = 3
    # Not in the paper: each pyramid network adds its input to its output, level by level, so exit k starts as
    # exit k-1 plus a refinement. Off for the paper's presets; the small CPU default turns it on (README).
    residual_pyramids: bool = False

    # heads
    head_convs: int = 4
    shared_head: bool = True  # one set of head conv weights for every exit (norms stay per exit)
    anchor_scales: int = 3  # octave scales per level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_size: float = 4.0  # base anchor side = anchor_size * stride

    # loss (paper §4.1)
    focal_alpha: float = 0.25
    focal_gamma: float = 1.5
    box_loss_beta: float = 0.1
    exit_weights: list[float] | None = None  # deep-supervision weight per exit; None = all 1

    # post-processing
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    topk_candidates: int = 1000  # at most 1000: torch's dynamo exporter fails on batched NMS over more boxes
    detections_per_img: int = 100

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return 1 if self.pyramid == "fpn" else self.repeats

    @property
    def levels(self) -> tuple[int, ...]:
        if self.pyramid == "fpn":
            return (3, 4, 5, 6, 7)
        return self.architecture().levels

    def architecture(self):
        """The stacked pyramid network's ``PyramidSpec``: the embedded one, else the one ``pyramid`` names."""
        from anytime.model.spec import ArchitectureError, PyramidSpec

        if self.pyramid == "fpn":
            raise ConfigError("the FPN baseline is torchvision's FPN, not an architecture of merging cells")
        if self.pyramid_spec is None:
            return PyramidSpec.load(self.pyramid)
        if not isinstance(self.pyramid_spec, dict):
            raise ConfigError(f"pyramid_spec must be an architecture object, got {type(self.pyramid_spec).__name__}")
        try:
            return PyramidSpec.from_dict(self.pyramid_spec)
        except ArchitectureError as e:
            raise ConfigError(f"pyramid_spec (from {self.pyramid}): {e}") from None

    def with_architecture(self) -> "ModelConfig":
        """This config with its architecture embedded (``pyramid_spec``): what a trained model saves."""
        if self.pyramid == "fpn" or self.pyramid_spec is not None:
            return self
        return dataclasses.replace(self, pyramid_spec=self.architecture().to_dict())

    def exit_weight_list(self) -> list[float]:
        w = self.exit_weights or [1.0] * self.num_exits
        if len(w) != self.num_exits:
            raise ConfigError(f"exit_weights has {len(w)} entries but the model has {self.num_exits} exits")
        return [float(x) for x in w]

    def validate(self) -> "ModelConfig":
        from anytime.model.backbone import BACKBONES

        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose from {', '.join(sorted(BACKBONES))}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1, got {self.repeats}")
        if self.width < 8:
            raise ConfigError(f"width must be at least 8, got {self.width}")
        if self.residual_pyramids and self.pyramid == "fpn":
            raise ConfigError("residual_pyramids needs a stacked NAS-FPN; the FPN baseline has a single pyramid")
        if self.pyramid == "fpn" and self.pyramid_spec is not None:
            raise ConfigError("pyramid_spec is set but the pyramid is the FPN baseline, which has no merging cells")
        levels = self.levels  # also validates the architecture
        if min(levels) < 3:
            raise ConfigError(f"the pyramid's levels {list(levels)} start below P3: backbones give C3 (stride 8) "
                              "as their finest feature")
        stride = 2 ** max(levels)
        if self.image_size <= 0 or self.image_size % stride:
            raise ConfigError(
                f"image size {self.image_size} cannot be divided by the pyramid: levels up to P{max(levels)} need a "
                f"multiple of {stride} (try {max(stride, round(self.image_size / stride) * stride)})"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        self.exit_weight_list()
        return self

    # -- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["aspect_ratios"] = list(self.aspect_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = known_fields(cls, d, "model")
        if "aspect_ratios" in d:
            d["aspect_ratios"] = tuple(d["aspect_ratios"])
        return cls(**d)

    @classmethod
    def of_trained(cls, d: dict) -> "ModelConfig":
        """The config saved with a trained model (a checkpoint's, an eval report's): its weights come with it, so
        the backbone initialisation file used at training time is not needed and need not exist here."""
        return cls.from_dict({**d, "backbone_weights": None})

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# The paper's models (Table 1) and a small default that trains on 2 CPU cores.
PRESETS: dict[str, dict] = {
    "r50-nasfpn-7@256": dict(backbone="resnet50", pyramid="nasfpn", repeats=7, width=256, image_size=640, num_classes=90),
    "r50-nasfpn-3@256": dict(backbone="resnet50", pyramid="nasfpn", repeats=3, width=256, image_size=640, num_classes=90),
    "r50-fpn@256": dict(backbone="resnet50", pyramid="fpn", repeats=1, width=256, image_size=640, num_classes=90),
    "r10-nasfpn-3@256-proxy": dict(backbone="resnet10", pyramid="nasfpn", repeats=3, width=256, image_size=512, num_classes=90),
    "mnv2-nasfpnlite-7@64": dict(
        backbone="mobilenet_v2", pyramid="nasfpn-lite", repeats=7, width=64, separable=True, image_size=320, num_classes=90
    ),
}
DEFAULT_PRESET = "default"


def load_model_config(name_or_path: str | Path | None = None) -> ModelConfig:
    """A preset name, a built-in config name, or a JSON file (a bare model config or a train config with "model")."""
    name_or_path = name_or_path or DEFAULT_PRESET
    if str(name_or_path) in PRESETS:
        return ModelConfig(**PRESETS[str(name_or_path)])
    path = Path(name_or_path)
    if not path.exists() and (CONFIG_DIR / f"{name_or_path}.json").exists():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(list(PRESETS) + [p.stem for p in CONFIG_DIR.glob("*.json")])
        raise ConfigError(f"unknown configuration {str(name_or_path)!r}: not a preset ({', '.join(known)}) and no such file")
    data = read_json(path, ConfigError)
    model = dict(data.get("model", data))
    # A training config may leave the dataset-given fields null (training fills them in from the data).
    for key in ("num_classes", "class_names"):
        if model.get(key, 0) is None:
            del model[key]
    return ModelConfig.from_dict(model)

# The embedded default model (trained on the default synthetic benchmark; see README "The default model").
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "default_model.pt"
DEFAULT_REPOSITORY = Path("model_repository")
