"""Training: configs, the loop (deep supervision, DDP, exact resume) and checkpoints.

The names below load on first use (``anytime.lazy``): the ``anytime`` command imports ``anytime.train.cli`` to
build its parser, and the loop and checkpoints import torch, which only training, evaluation and export need.
"""

from typing import TYPE_CHECKING

from anytime.lazy import lazy_exports

__all__ = ["TrainConfig", "RunConfig", "load_run_config", "Trainer", "train", "load_model",
           "save_inference_checkpoint", "CheckpointError"]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["TrainConfig", "RunConfig", "load_run_config"], "anytime.train.config"),
    **dict.fromkeys(["Trainer", "train"], "anytime.train.loop"),
    **dict.fromkeys(["load_model", "save_inference_checkpoint", "CheckpointError"], "anytime.train.checkpoint"),
})

if TYPE_CHECKING:
    from anytime.train.checkpoint import CheckpointError, load_model, save_inference_checkpoint
    from anytime.train.config import RunConfig, TrainConfig, load_run_config
    from anytime.train.loop import Trainer, train
