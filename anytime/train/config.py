"""Training configuration: a JSON file ``{"model": {...}, "train": {...}}`` read into dataclasses.

The model section holds ``ModelConfig`` fields; ``num_classes`` and ``class_names`` may be left out (or null)
and are then taken from the training set, so one config file fits any dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from anytime.config import ConfigError, ModelConfig, known_fields, load_model_config
from anytime.files import read_json

PAPER_LR, PAPER_BATCH = 0.08, 64  # paper §4.1: lr 0.08 at batch 64, scaled linearly with the batch
SCHEDULES = ("step", "cosine")
DATASET_FIELDS = ("num_classes", "class_names")  # model fields the dataset fills in when left null


@dataclass
class TrainConfig:
    name: str | None = None  # run name; defaults to the config file's stem
    data_dir: str | None = None  # COCO-style root (train/, val/, annotations/); None = the default benchmark
    out_dir: str | None = None  # None = runs/<name>

    batch_size: int = 16  # global batch (summed over DDP processes)
    epochs: float = 50  # length of training, unless max_iters is set
    max_iters: int | None = None  # overrides epochs when set

    lr: float | None = None  # None = 0.08 * batch_size / 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = True  # no weight decay on BN weights and biases
    warmup_iters: int = 500
    warmup_factor: float = 0.001  # lr multiplier at iteration 0, rising linearly to 1 over warmup_iters
    schedule: str = "step"  # "step": x gamma at each milestone; "cosine": to 0 at the last iteration
    milestones: list[float] = field(default_factory=lambda: [30, 40])  # epochs (may be fractional)
    gamma: float = 0.1
    grad_clip: float | None = None  # max global gradient norm; None = no clipping

    amp: bool | None = None  # mixed precision; None = only when CUDA is used
    sync_bn: bool = False  # SyncBatchNorm across DDP processes (CUDA only)
    seed: int = 0
    num_workers: int = 0
    skip_bad_data: bool = False  # drop unreadable images / broken annotations instead of failing

    log_every: int = 10  # iterations between metrics lines
    checkpoint_every: int = 500  # iterations between last.pt snapshots
    # Multi-resolution training: every batch is letterboxed to one of these input sizes (px), drawn per batch
    # from (seed, epoch, batch), with anchors for that size, so one set of weights serves every size (issue 33:
    # options across input sizes as well as depth). None: the model's own image_size only, as before.
    image_sizes: list[int] | None = None
    # Start from this checkpoint's weights (same model config) instead of a fresh initialisation: fine-tuning,
    # e.g. the shipped model taught more input sizes with image_sizes. Optimizer and schedule start afresh.
    init_checkpoint: str | None = None

    # -- derived ---------------------------------------------------------------------------------------
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else PAPER_LR * self.batch_size / PAPER_BATCH

    def validate(self) -> "TrainConfig":
        positive = ["batch_size", "log_every", "checkpoint_every"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_iters is not None and (not isinstance(self.max_iters, int) or self.max_iters < 1):
            raise ConfigError(f"train.max_iters must be a positive integer or null, got {self.max_iters!r}")
        if self.max_iters is None and not self.epochs > 0:
            raise ConfigError(f"train.epochs must be positive, got {self.epochs!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.base_lr() <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr!r}")
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ConfigError("train.warmup_iters must be >= 0 and train.warmup_factor in (0, 1]")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be positive or null, got {self.grad_clip}")
        if self.image_sizes is not None and (not self.image_sizes or any(
                not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in self.image_sizes)):
            raise ConfigError(f"train.image_sizes must be a non-empty list of positive integers or null, "
                              f"got {self.image_sizes!r}")
        if sorted(self.milestones) != list(self.milestones):
            raise ConfigError(f"train.milestones must be ascending, got {self.milestones}")
        return self

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / (self.name or "default")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**known_fields(cls, d, "train"))


@dataclass
class RunConfig:
    """A whole training run: the model section as written (dataset fields may be null) and the train section."""

    model: dict
    train: TrainConfig

    def model_config(self, class_names: list[str] | None = None) -> ModelConfig:
        """The ``ModelConfig``, with num_classes/class_names from the dataset where the file leaves them null, and
        the architecture embedded (``pyramid_spec``) so that the checkpoints it trains never need the file."""
        d = dict(self.model)
        if class_names is not None:
            if d.get("num_classes") is None:
                d["num_classes"] = len(class_names)
            elif d["num_classes"] != len(class_names):
                raise ConfigError(
                    f"model.num_classes is {d['num_classes']} but the dataset has {len(class_names)} classes; "
                    "set it to null to take it from the dataset"
                )
            if d.get("class_names") is None:
                d["class_names"] = list(class_names)
        d = {k: v for k, v in d.items() if not (k in DATASET_FIELDS and v is None)}
        return ModelConfig.from_dict(d).with_architecture().validate()  # validated on the embedded copy: one read

    def to_dict(self) -> dict:
        return {"model": dict(self.model), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, name: str | None = None) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError("a training config must be a JSON object with \"model\" and \"train\" sections")
        unknown = sorted(set(d) - {"model", "train", "_comment"})
        if unknown:
            raise ConfigError(f"unknown top-level config field(s): {', '.join(unknown)} (expected \"model\" and \"train\")")
        model = d.get("model", {})
        if isinstance(model, str):  # a preset or built-in config name
            model = {k: v for k, v in load_model_config(model).to_dict().items() if k not in DATASET_FIELDS}
        if not isinstance(model, dict):
            raise ConfigError("the \"model\" section must be an object of model config fields or a preset name")
        # Fail on unknown or malformed model fields now, before any data is read.
        names = model.get("class_names") or ["?"] * (model.get("num_classes") or 1)
        RunConfig(model, TrainConfig()).model_config(names)
        train = TrainConfig.from_dict(d.get("train", {}))
        if train.name is None:
            train.name = name
        return cls(model, train.validate())


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    data = read_json(path, ConfigError)
    try:
        return RunConfig.from_dict(data, name=path.stem)
    except TypeError as e:  # e.g. a field of the wrong shape
        raise ConfigError(f"{path}: {e}") from None
