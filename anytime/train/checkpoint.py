"""Checkpoint files: atomic writes, training snapshots, small inference checkpoints, and loading a model back.

Everything is stored as tensors and plain Python values, so files load with ``torch.load(weights_only=True)``
(no arbitrary code runs when opening a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anytime.config import DEFAULT_CHECKPOINT, ConfigError, ModelConfig
from anytime.files import atomic_write
from anytime.model import AnytimeRetinaNet

DEFAULT_MODEL = DEFAULT_CHECKPOINT  # the small shipped model (one definition, in anytime.config)
FORMAT = "anytime-checkpoint"
VERSION = 1
# BN statistics stay fp32 in half-precision files: tiny variances would flush to zero in fp16.
_KEEP_FP32 = ("running_mean", "running_var")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and the problem."""


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` through ``atomic_write``: a crash never leaves half a checkpoint."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The raw checkpoint dict, or ``CheckpointError`` saying why the file cannot be one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled code objects, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "the file is truncated or not a checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not an anytime checkpoint (no model config and weights)")
    return ckpt


def load_model(path: str | Path, map_location="cpu") -> tuple[AnytimeRetinaNet, dict]:
    """Rebuild the network from the checkpoint's own config and load its weights (fp16 files come back fp32).

    Returns the model in eval mode and the checkpoint's metadata (configs, class names, cat_ids, iteration).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    try:
        cfg = ModelConfig.of_trained(ckpt["model_config"])
        model = AnytimeRetinaNet(cfg)
    except (ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has an unusable model config: {e}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    load_state(model, state, path)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")}
    meta["path"] = str(path)
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), meta


def load_state(model: torch.nn.Module, state: dict, path: str | Path, limit: int = 600) -> None:
    """Strict ``load_state_dict``; its own report of missing, unexpected and mis-shaped keys becomes an error
    that names the file (cut at ``limit`` characters: a foreign checkpoint can differ in hundreds of keys)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        report = " ".join(line.strip() for line in str(e).splitlines()[1:])
        if len(report) > limit:
            report = report[:limit] + " ..."
        raise CheckpointError(f"checkpoint {path} does not match its config: {report}") from None


def save_inference_checkpoint(model: AnytimeRetinaNet, path: str | Path, meta: dict | None = None,
                              half: bool = True) -> Path:
    """Config + weights (fp16 by default) + class names only: what shipping a model needs, nothing to resume."""
    model = getattr(model, "module", model)
    meta = meta or {}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() and not k.endswith(_KEEP_FP32) else v for k, v in state.items()}
    cfg = {**model.cfg.to_dict(), "backbone_weights": None}
    return atomic_save({
        "format": FORMAT, "version": VERSION, "kind": "inference",
        "model_config": cfg, "model": state,
        "class_names": meta.get("class_names", model.cfg.class_names), "cat_ids": meta.get("cat_ids"),
        "iteration": meta.get("iteration"),
    }, path)


# -- RNG state, as plain values so weights_only loading accepts it ---------------------------------------
def rng_state() -> dict:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
