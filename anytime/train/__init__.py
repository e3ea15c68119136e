"""Training: configs, the loop (deep supervision, DDP, exact resume) and checkpoints."""

from anytime.train.checkpoint import CheckpointError, load_model, save_inference_checkpoint
from anytime.train.config import RunConfig, TrainConfig, load_run_config
from anytime.train.loop import Trainer, train

__all__ = ["TrainConfig", "RunConfig", "load_run_config", "Trainer", "train", "load_model",
           "save_inference_checkpoint", "CheckpointError"]
