"""The proxy task (paper §4.2): a shortened training whose AP on held-out *training* images is the reward.

Presets (``PRESETS``):

- ``paper``: the paper's settings. ResNet-10, 512x512, 3 stacked pyramid networks @ 256, 10 epochs with the lr
  decayed x0.1 at epoch 8 (lr 0.08 at batch 64, §4.1), and the reward on 7392 images held out from the
  training set (never val). It needs COCO train2017 (set ``proxy.data_dir`` in the search config) and
  accelerators; it is here so the search can run as the paper's where they exist.
- ``cpu`` (the default): what a 2-core CPU machine can pay and still separate architectures (measured by
  ``benchmarks/proxy_signal.py --proxy cpu``: the spread between architectures is many times the noise of one
  architecture over seeds; docs/search.md has the table). 128 px on a 4-class variant of the synthetic benchmark;
  the slim ResNet-10 initialised from the proxies' own backbone weights (``anytime/assets/proxy_backbone.pt``: from
  scratch every architecture lands at about the same, near-zero AP); 2 pyramid networks @ 32; 600 iterations at
  batch 8, lr 0.01 cosine; one torch thread per trial; the reward is the AP of the last exit on 300 images drawn
  with a different seed of the generator's *training* split: held out from the training data, never the val split.
- ``cpu256``: the target's task in a short schedule, to rank the *best* architectures as full training does
  (the ``cpu`` proxy ranks them poorly: docs/search.md). The default model's recipe itself (256 px, all 10
  classes, 4 residual pyramid networks @ 64, its exit weights) for 600 of its 4000 iterations, with the same
  backbone weights as ``cpu``: about 10 minutes a trial on one core.
- ``tiny``: the same task cut to seconds per trial, for tests and a first try.

Every trial trains with the same seed, so two architectures see the same data order and augmentation, and
the reward differences are the architectures' (common random numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from anytime.config import ConfigError, known_fields, with_pyramid

PAPER_HOLDOUT = 7392  # images of COCO train2017 the paper reserves for rewards (§4.2)
PROXY_BACKBONE = Path(__file__).resolve().parents[1] / "assets" / "proxy_backbone.pt"


@dataclass
class ProxyConfig:
    name: str = "cpu"
    # Data: None = generate the synthetic sets below; else a COCO-format root whose train split is divided
    # into training images and `holdout` reward images (a seeded draw).
    data_dir: str | None = None
    holdout: int | None = None
    num_classes: int = 4  # synthetic sets only
    train_images: int = 2000
    reward_images: int = 300
    data_seed: int = 1  # the training set; the reward set uses data_seed + 1 (another draw of the training split)
    # The model: ModelConfig fields; the pyramid is the trial's architecture.
    model: dict = field(default_factory=dict)
    # The schedule: TrainConfig fields.
    train: dict = field(default_factory=dict)
    # "proxy_backbone": the proxies' own weights (anytime/assets/proxy_backbone.pt, the backbone of the model shipped
    # when the search began, kept apart so that a proxy does not change when the shipped model does; the set of
    # architectures scored for fidelity includes NAS-FPN, with which they were co-trained, to measure that bias);
    # "default_model": the backbone of whatever model is shipped now; a path: a backbone state_dict; None: scratch.
    backbone_init: str | None = "proxy_backbone"
    threads: int = 1  # torch threads per trial (two per trial, two trials at once, were many times slower on 2 cores)
    reward_exit: int | str = "last"  # the reward: the last exit's AP, "mean" (AP averaged over exits), or exit k's
    eval_batch_size: int = 16

    def validate(self) -> "ProxyConfig":
        from anytime.data.synth import MAX_CLASSES

        if self.data_dir is None and not 2 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"proxy.num_classes must be between 2 and {MAX_CLASSES}, got {self.num_classes}")
        if self.data_dir is None and (self.train_images < 1 or self.reward_images < 1):
            raise ConfigError("proxy.train_images and proxy.reward_images must be positive")
        if self.data_dir is None and self.holdout is not None:
            raise ConfigError(f"proxy {self.name}: holdout needs proxy.data_dir, a COCO-format root whose training split "
                              f"it divides (the paper holds out {PAPER_HOLDOUT} images of COCO train2017); set "
                              "\"proxy\": {\"data_dir\": ...} in the search config")
        if self.data_dir is not None and not (isinstance(self.holdout, int) and self.holdout > 0):
            raise ConfigError("proxy.holdout (reward images held out from the training split) must be a positive "
                              "integer when proxy.data_dir is set")
        if self.threads < 1:
            raise ConfigError(f"proxy.threads must be at least 1, got {self.threads}")
        if self.reward_exit not in ("last", "mean") and not (isinstance(self.reward_exit, int) and self.reward_exit >= 1):
            raise ConfigError(f"proxy.reward_exit must be \"last\", \"mean\" or an exit number, got {self.reward_exit!r}")
        self.run_config("nasfpn")  # the model and train sections must make a valid run
        return self

    def run_config(self, pyramid: str, out_dir: str | None = None, num_classes: int | None = None):
        """The training run of one trial: this proxy's model and schedule with ``pyramid`` as the pyramid."""
        from anytime.train.config import RunConfig

        model = with_pyramid(self.model, pyramid)
        if pyramid == "fpn":  # the FPN baseline is one pyramid; residual stacking does not apply
            model.update(repeats=1, residual_pyramids=False, exit_weights=None)
        if num_classes is not None:
            model["num_classes"] = num_classes
        train = {"log_every": 10 ** 9, "checkpoint_every": 10 ** 9, **self.train, "out_dir": out_dir}
        try:
            return RunConfig.from_dict({"model": model, "train": train}, name=f"proxy-{self.name}")
        except TypeError as e:
            raise ConfigError(f"proxy {self.name}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProxyConfig":
        return cls(**known_fields(cls, d, "proxy"))


_SLIM = dict(backbone="resnet10", backbone_width=0.125, anchor_size=2.0, head_convs=1)
PRESETS: dict[str, dict] = {
    "paper": dict(
        name="paper", holdout=PAPER_HOLDOUT, backbone_init=None, threads=8, eval_batch_size=8,
        model=dict(backbone="resnet10", image_size=512, repeats=3, width=256, head_convs=4),
        # 10 epochs, lr 0.08 at batch 64 decayed x0.1 at epoch 8 (§4.1, §4.2).
        train=dict(batch_size=64, lr=0.08, epochs=10, milestones=[8], schedule="step", warmup_iters=500, seed=0),
    ),
    "cpu": dict(
        name="cpu", num_classes=4, train_images=2000, reward_images=300,
        model=dict(**_SLIM, image_size=128, repeats=2, width=32),
        train=dict(batch_size=8, lr=0.01, max_iters=600, schedule="cosine", warmup_iters=50, grad_clip=10.0, seed=0),
    ),
    "cpu256": dict(
        name="cpu256", num_classes=10, train_images=2000, reward_images=300,
        model=dict(**_SLIM, image_size=256, repeats=4, width=64, residual_pyramids=True,
                   exit_weights=[0.4, 0.8, 1.2, 1.6]),
        train=dict(batch_size=8, lr=0.01, max_iters=600, schedule="cosine", warmup_iters=50, grad_clip=10.0, seed=0),
    ),
    "tiny": dict(
        name="tiny", num_classes=4, train_images=48, reward_images=16, eval_batch_size=8,
        model=dict(**_SLIM, image_size=128, repeats=1, width=16),
        train=dict(batch_size=4, lr=0.02, max_iters=30, schedule="cosine", warmup_iters=2, grad_clip=10.0, seed=0),
    ),
}
DEFAULT_PRESET = "cpu"


def load_proxy(preset: str | None = None, overrides: dict | None = None) -> ProxyConfig:
    """A preset with optional overrides (a search config's ``"proxy"`` section); ``model``/``train`` merge."""
    overrides = dict(overrides or {})
    name = preset or overrides.pop("preset", None) or DEFAULT_PRESET
    overrides.pop("preset", None)
    if name not in PRESETS:
        raise ConfigError(f"unknown proxy preset {name!r}; choose from {', '.join(PRESETS)}")
    base = json.loads(json.dumps(PRESETS[name]))
    for section in ("model", "train"):
        if section in overrides:
            base[section] = {**base[section], **overrides.pop(section)}
    return ProxyConfig.from_dict({**base, **overrides}).validate()


# -- data, prepared once per machine and shared by every trial -------------------------------------------
def data_key(proxy: ProxyConfig) -> str:
    """A name for this proxy's data that changes whenever anything that shapes the data changes."""
    from anytime.data.synth import DESCRIPTION

    image_size = proxy.model.get("image_size", 256)
    fields = [proxy.num_classes, proxy.train_images, proxy.reward_images, proxy.data_seed, image_size, DESCRIPTION]
    return f"{proxy.name}-" + hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:10]


def prepare(proxy: ProxyConfig, cache: str | Path) -> dict:
    """Make (or find) the trial inputs: {"train": dir, "reward": dir | None, "backbone": file | None}.

    Synthetic sets are generated under ``cache`` (deterministic: the same files on every machine), the
    shipped model's backbone is extracted there. Safe to call from several processes at once: each result is
    written under a private temporary name and renamed into place.
    """
    cache = Path(cache).resolve()
    out = {"train": None, "reward": None, "backbone": None}
    if proxy.data_dir is None:
        from anytime.data.synth import generate

        image_size = proxy.model.get("image_size", 256)
        root = cache / data_key(proxy)
        for part, seed, count in (("train", proxy.data_seed, proxy.train_images),
                                  ("reward", proxy.data_seed + 1, proxy.reward_images)):
            target = root / part
            if not (target / "annotations" / "instances_val.json").is_file():
                # Both parts are the generator's *training* split (split index 0), under two seeds; val is never used.
                _atomic_dir(target, lambda tmp, seed=seed, count=count: generate(
                    tmp, seed=seed, num_train=count, num_val=0, image_size=image_size,
                    num_classes=proxy.num_classes, progress=False))
            out[part] = str(target)
    else:
        if not Path(proxy.data_dir).is_dir():
            raise ConfigError(f"proxy.data_dir {proxy.data_dir} does not exist")
        out["train"] = str(Path(proxy.data_dir).resolve())
    if proxy.backbone_init == "proxy_backbone":
        out["backbone"] = str(PROXY_BACKBONE)
    elif proxy.backbone_init == "default_model":
        target = cache / "default_model_backbone.pt"
        if not target.is_file():
            extract_backbone(target)
        out["backbone"] = str(target)
    elif proxy.backbone_init:
        if not Path(proxy.backbone_init).is_file():
            raise ConfigError(f"proxy.backbone_init {proxy.backbone_init} does not exist")
        out["backbone"] = str(Path(proxy.backbone_init).resolve())
    return out


def extract_backbone(out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """The backbone weights of a checkpoint (default: the shipped model) as a torchvision ResNet state_dict."""
    import torch

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.files import atomic_write
    from anytime.train.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint or DEFAULT_CHECKPOINT)
    prefix = "backbone.body."
    state = {k[len(prefix):]: v.float() if v.is_floating_point() else v
             for k, v in ckpt["model"].items() if k.startswith(prefix)}
    return atomic_write(out, lambda f: torch.save(state, f))


def _atomic_dir(target: Path, make) -> None:
    """``make(tmp)`` writes a directory at ``tmp``, which then becomes ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        make(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first (a non-empty directory cannot be replaced)
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
