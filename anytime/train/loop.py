"""The training loop: SGD with warmup and a step or cosine schedule, deep supervision, DDP, exact resume.

Resuming is exact because everything random is a function of saved state: model/optimizer/scheduler state,
the global RNG states, and the data order, which is a per-epoch permutation drawn from (seed, epoch) with its
own generator. Each sample's augmentation runs under a seed drawn from (seed, epoch, index), so it depends on
neither the number of data-loader workers nor the point where a run was resumed. Launched by ``torchrun``
(WORLD_SIZE > 1) the same code runs data-parallel: every global batch is split across processes, so the data
order (and the meaning of batch_size and lr) does not depend on the number of processes.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from anytime.config import ConfigError, ModelConfig
from anytime.model import AnytimeRetinaNet
from anytime.train.checkpoint import (FORMAT, VERSION, CheckpointError, atomic_save, load_model, load_state,
                                      read_checkpoint, rng_state, set_rng_state)
from anytime.train.config import RunConfig, TrainConfig

log = logging.getLogger(__name__)

# Train-config fields that may change between a run and its resumption without a warning.
_RESUME_FREE = {"name", "out_dir", "data_dir", "num_workers", "log_every", "checkpoint_every"}
# ... and those that cannot change at all (they define the data order already consumed).
_RESUME_FIXED = {"batch_size", "seed", "image_sizes"}


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0]) >> 1


# -- data order ---------------------------------------------------------------------------------------------
class SeededSamples(Dataset):
    """Item ``(epoch, index)`` is ``dataset[index]`` with every RNG seeded from (seed, epoch, index).

    Runs inside data-loader workers; the caller's RNG states are left untouched.
    """

    def __init__(self, dataset, seed: int, sizes: list[int] | None = None):
        self.dataset, self.seed = dataset, seed
        # multi-resolution training: one train transform per size, the dataset's own one left aside
        self.transforms = None
        if sizes is not None:
            from anytime.data.transforms import train_transform

            self.transforms = {s: train_transform(s) for s in sizes}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]):
        """``(epoch, index)``, or ``(epoch, index, size)`` with the batch's input size."""
        epoch, index = key[:2]
        with _seeded(mix_seed(self.seed, epoch, index)):
            if len(key) == 3:
                return self.dataset.item(index, self.transforms[key[2]])
            return self.dataset[index]


@contextlib.contextmanager
def _seeded(seed: int):
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class EpochBatches(Sampler):
    """This process's part of every global batch of one epoch, starting at batch ``start`` (drop-last)."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world: int = 1,
                 image_sizes: list[int] | None = None):
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return self.size // self.batch_size - self.start

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        for b in range(self.start, self.size // self.batch_size):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]
            if self.image_sizes is None:
                yield [(self.epoch, int(i)) for i in batch]
            else:  # one size for the whole global batch, the same in every process and on resume
                size = size_of_batch(self.image_sizes, self.seed, self.epoch, b)
                yield [(self.epoch, int(i), size) for i in batch]


def size_of_batch(sizes: list[int], seed: int, epoch: int, batch: int) -> int:
    """The input size of global batch ``batch`` of ``epoch``: uniform over ``sizes``, fixed by the seed."""
    return sizes[mix_seed(seed, epoch, batch, 5132) % len(sizes)]  # 5132: this draw's own stream


# -- schedule -----------------------------------------------------------------------------------------------
class LRFactor:
    """Multiplier of the base lr at an iteration: linear warmup times step decay or cosine (closed form)."""

    def __init__(self, total_iters: int, warmup_iters: int, warmup_factor: float, schedule: str,
                 milestones: list[int], gamma: float):
        self.total_iters, self.warmup_iters, self.warmup_factor = total_iters, warmup_iters, warmup_factor
        self.schedule, self.milestones, self.gamma = schedule, list(milestones), gamma

    def __call__(self, it: int) -> float:
        f = 1.0
        if it < self.warmup_iters:
            f = self.warmup_factor + (1 - self.warmup_factor) * it / self.warmup_iters
        if self.schedule == "cosine":
            return f * 0.5 * (1 + math.cos(math.pi * min(it, self.total_iters) / self.total_iters))
        return f * self.gamma ** bisect.bisect_right(self.milestones, it)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Weight decay on conv/linear weights only: norm weights and biases (1-d tensors) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if no_decay_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# -- distributed --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; pick the device (this process's GPU, else CPU)."""
    d = Dist(int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", d.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if d.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return d, device


class LossModule(nn.Module):
    """``forward`` = ``model.losses``, so DistributedDataParallel sees (and synchronises) the training pass."""

    def __init__(self, model: AnytimeRetinaNet):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.model.losses(images, targets)


# -- metrics ------------------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl (one JSON object per log step) and TensorBoard scalars under out_dir/tb; rank 0 only.

    On resume, lines and events after the resumed iteration (written before the crash) are dropped.
    """

    def __init__(self, out_dir: Path, start_iter: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.path = out_dir / "metrics.jsonl"
        if start_iter and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if _line_iter(line) <= start_iter]
            self.path.write_text("".join(line + "\n" for line in keep))
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k not in ("iter", "epoch") and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, record["iter"])
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _line_iter(line: str) -> float:
    try:
        return json.loads(line)["iter"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line from a crash


# -- the trainer --------------------------------------------------------------------------------------------
def open_train_set(cfg: TrainConfig, image_size: int):
    """The training split with train-time augmentation; a missing or broken data dir is a ConfigError."""
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.coco import CocoDetection, DatasetError, find_split
    from anytime.data.transforms import train_transform

    if cfg.data_dir is None:
        from anytime.data.synth import ensure_default

        data_dir = Path(DEFAULT_DATA_DIR)
        ensure_default(data_dir)
    else:
        data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data directory {data_dir} does not exist (make one with `anytime data synth --out {data_dir}`)")
    try:
        image_dir, ann_file = find_split(data_dir, "train")
        return CocoDetection(image_dir, ann_file, transform=train_transform(image_size), skip_bad=cfg.skip_bad_data)
    except (DatasetError, FileNotFoundError) as e:
        raise ConfigError(f"training data in {data_dir}: {e}") from None


class Trainer:
    """One training run. ``run()`` trains to the end; ``step()`` is one optimisation step."""

    def __init__(self, run: RunConfig, resume: bool = False, progress: bool = True, dataset=None):
        self.run_config, self.cfg, self.progress = run, run.train, progress
        cfg = self.cfg
        self.dist, self.device = setup_distributed()
        self.out_dir = cfg.resolved_out_dir()
        last = self.out_dir / "last.pt"
        ckpt = None
        if resume:
            ckpt = read_checkpoint(last)
        elif last.exists():
            raise ConfigError(f"{self.out_dir} already holds a run ({last}); pass --resume to continue it or use another --out")

        image_size = run.model.get("image_size") or ModelConfig().image_size
        self.dataset = dataset if dataset is not None else open_train_set(cfg, image_size)
        self.model_cfg = run.model_config(list(self.dataset.class_names))
        for size in cfg.image_sizes or ():  # every size must fit the pyramid's strides, checked before training
            self.model_cfg.replace(image_size=size).validate()
        if cfg.image_sizes and not hasattr(self.dataset, "item"):
            raise ConfigError("train.image_sizes needs a dataset with item(index, transform) (CocoDetection)")
        if cfg.batch_size % self.dist.world:
            raise ConfigError(f"train.batch_size {cfg.batch_size} must be divisible by the {self.dist.world} processes")
        self.iters_per_epoch = len(self.dataset) // cfg.batch_size
        if self.iters_per_epoch == 0:
            raise ConfigError(f"the training set has {len(self.dataset)} images, fewer than batch_size {cfg.batch_size}")
        self.total_iters = cfg.max_iters or max(1, round(cfg.epochs * self.iters_per_epoch))
        if ckpt is not None:
            self._check_resumable(ckpt)

        _seed_all(cfg.seed)  # identical initial weights in every process and every run with this seed
        self.model = AnytimeRetinaNet(self.model_cfg).to(self.device)
        if cfg.init_checkpoint and ckpt is None:  # on resume, last.pt holds the weights
            self._initialise_from(Path(cfg.init_checkpoint))
        _seed_all(mix_seed(cfg.seed, self.dist.rank))  # then per-process streams (e.g. DropBlock masks)
        net: nn.Module = LossModule(self.model)
        if self.dist.world > 1:
            if cfg.sync_bn and self.device.type == "cuda":
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = net
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.stat_buffers = [b for n, b in self.model.named_buffers() if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]

        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg.weight_decay, cfg.no_decay_norm_bias),
                                         lr=cfg.base_lr(), momentum=cfg.momentum)
        milestones = [round(m * self.iters_per_epoch) for m in cfg.milestones]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, LRFactor(
            self.total_iters, cfg.warmup_iters, cfg.warmup_factor, cfg.schedule, milestones, cfg.gamma))
        self.amp = self.device.type == "cuda" if cfg.amp is None else (cfg.amp and self.device.type == "cuda")
        if cfg.amp and self.device.type != "cuda":
            log.warning("train.amp is on but CUDA is not available; training in fp32")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.iteration = 0
        self.skipped = 0
        if ckpt is not None:
            self._restore(ckpt)

    # -- resume ------------------------------------------------------------------------------------------
    def _initialise_from(self, path: Path) -> None:
        """Load another run's weights (``train.init_checkpoint``); its model must be this run's."""
        if not path.is_file():
            raise ConfigError(f"train.init_checkpoint {path} does not exist")
        try:
            other, _ = load_model(path)  # its config rebuilt and its weights as fp32, as evaluation loads them
        except CheckpointError as e:
            raise ConfigError(f"train.init_checkpoint: {e}") from None
        mine, theirs = self.model_cfg.to_dict(), other.cfg.to_dict()
        # the architecture is compared resolved: a built-in pyramid may be saved by name or spelled out
        differ = sorted(k for k in mine if k not in ("backbone_weights", "pyramid_spec") and mine[k] != theirs.get(k))
        if self.model_cfg.pyramid != "fpn" and self.model_cfg.architecture() != other.cfg.architecture():
            differ.append("pyramid architecture")
        if differ:
            raise ConfigError(f"train.init_checkpoint {path} is another model: {', '.join(differ)} differ")
        self.model.load_state_dict(other.state_dict())

    def _check_resumable(self, ckpt: dict) -> None:
        saved, now = ckpt.get("model_config"), self.model_cfg.to_dict()
        if "pyramid_spec" not in saved:  # a run started before configs embedded their architecture
            now.pop("pyramid_spec")
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ConfigError(f"cannot resume: the model config differs from the checkpoint's ({', '.join(diff)})")
        old = ckpt.get("train_config", {})
        new = self.cfg.to_dict()
        changed = sorted(k for k in new if old.get(k) != new[k] and k not in _RESUME_FREE)
        fixed = [k for k in changed if k in _RESUME_FIXED]
        if fixed:
            raise ConfigError(f"cannot resume: {', '.join(fixed)} changed since the checkpoint (they fix the data order)")
        if changed and self.dist.main:
            log.warning("resuming with changed train settings: %s", ", ".join(changed))

    def _restore(self, ckpt: dict) -> None:
        load_state(self.model, ckpt["model"], self.out_dir / "last.pt")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        # Keep this run's schedule shape (e.g. more epochs); the saved base lrs and step count still apply.
        self.scheduler.load_state_dict({**ckpt["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = ckpt["iteration"]
        self.skipped = ckpt.get("skipped_steps", 0)
        states = ckpt["rng"]
        if len(states) == self.dist.world:
            set_rng_state(states[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d processes, now %d: RNG streams restart", len(states), self.dist.world)

    # -- one step ----------------------------------------------------------------------------------------
    def step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float] | None:
        """One SGD step; returns the losses, or None when the step was skipped for a non-finite loss/gradient."""
        images = images.to(self.device, non_blocking=True).float()
        if images.shape[-1] != self.model.cfg.image_size:  # multi-resolution training: this batch's anchors
            self.model.set_image_size(images.shape[-1])
        targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        stats_before = [b.clone() for b in self.stat_buffers]
        self.net.train()
        with torch.autocast(self.device.type, enabled=self.amp):
            out = self.net(images, targets)
        loss = out["loss"]
        ok = self._agree(torch.isfinite(loss.detach()))
        if ok:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or math.inf)
            ok = self.amp or bool(torch.isfinite(norm))  # with AMP the scaler skips inf steps itself
            if ok:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        if not ok:  # nothing of this batch may reach the weights, BN statistics included
            with torch.no_grad():
                for b, before in zip(self.stat_buffers, stats_before):
                    b.copy_(before)
            self.skipped += 1
            log.warning("iteration %d: non-finite loss or gradient (loss=%s); step skipped (%d skipped so far)",
                        self.iteration + 1, float(loss.detach()), self.skipped)
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped first step makes the scheduler warn about the call order
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            self.scheduler.step()
        return {k: float(v.detach()) for k, v in out.items()} if ok else None

    def _agree(self, flag: torch.Tensor) -> bool:
        """True only if every process has a finite loss (they must all skip together under DDP)."""
        if self.dist.world > 1:
            flag = flag.to(torch.float32).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.all())

    def _average_over_processes(self, window: dict[str, float]) -> dict[str, float]:
        """Loss sums of the log window averaged over DDP processes (each saw part of every batch)."""
        if self.dist.world == 1 or not window:
            return window
        keys = sorted(window)
        t = torch.tensor([window[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.dist.world).tolist()))

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """The full training state; every process must call this (RNG states are gathered to rank 0)."""
        states = [rng_state()]
        if self.dist.world > 1:
            states = [None] * self.dist.world
            dist.all_gather_object(states, rng_state())
        run = self.run_config.to_dict()
        run["model"]["pyramid_spec"] = self.model_cfg.pyramid_spec  # --resume works without the architecture's file
        return {
            "format": FORMAT, "version": VERSION, "kind": "train",
            "model_config": self.model_cfg.to_dict(), "train_config": self.cfg.to_dict(),
            "run_config": run,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.amp else None,
            "iteration": self.iteration, "epoch": self.iteration // self.iters_per_epoch,
            "epoch_position": self.iteration % self.iters_per_epoch, "total_iters": self.total_iters,
            "rng": states, "skipped_steps": self.skipped,
            "class_names": list(self.dataset.class_names), "cat_ids": [int(c) for c in self.dataset.cat_ids],
        }

    def save(self, *names: str) -> None:
        state = self.checkpoint()
        if self.dist.main:
            for name in names:
                atomic_save(state, self.out_dir / name)

    # -- the loop ----------------------------------------------------------------------------------------
    def loader(self, epoch: int, start: int) -> DataLoader:
        from anytime.data.coco import collate

        cfg = self.cfg
        batches = EpochBatches(len(self.dataset), cfg.batch_size, cfg.seed, epoch, start, self.dist.rank, self.dist.world,
                               cfg.image_sizes)
        return DataLoader(SeededSamples(self.dataset, cfg.seed, cfg.image_sizes), batch_sampler=batches, collate_fn=collate,
                          num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(mix_seed(cfg.seed, epoch)))  # not the global RNG

    def run(self) -> dict:
        """Train to ``total_iters``, checkpointing every ``checkpoint_every`` iterations (resume from any of them)."""
        from tqdm import tqdm

        cfg, main = self.cfg, self.dist.main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.run_config.to_dict(), indent=2) + "\n")
        metrics = MetricsLog(self.out_dir, self.iteration, main)
        bar = tqdm(total=self.total_iters, initial=self.iteration, disable=not (main and self.progress),
                   desc=f"train {cfg.name or ''}".strip(), dynamic_ncols=True)
        window: dict[str, float] = {}
        steps, t0, since, last, done = 0, time.perf_counter(), self.iteration, None, False
        while self.iteration < self.total_iters:
            epoch, start = divmod(self.iteration, self.iters_per_epoch)
            for images, targets in self.loader(epoch, start):
                lr = self.optimizer.param_groups[0]["lr"]
                losses = self.step(images, targets)
                self.iteration += 1
                if losses is not None:
                    steps += 1
                    for k, v in losses.items():
                        window[k] = window.get(k, 0.0) + v
                    bar.set_postfix(_postfix(losses, lr), refresh=False)
                bar.update(1)
                if self.iteration % cfg.log_every == 0 or self.iteration == self.total_iters:
                    elapsed = time.perf_counter() - t0
                    window = self._average_over_processes(window)
                    last = {"iter": self.iteration, "epoch": round(self.iteration / self.iters_per_epoch, 4), "lr": lr,
                            **{k: v / max(steps, 1) for k, v in window.items()},
                            "images_per_s": round(cfg.batch_size * (self.iteration - since) / max(elapsed, 1e-9), 2),
                            "skipped_steps": self.skipped}
                    metrics.write(last)
                    window, steps, t0, since = {}, 0, time.perf_counter(), self.iteration
                done = self.iteration >= self.total_iters
                if done:
                    self.save("last.pt", "final.pt")
                elif self.iteration % cfg.checkpoint_every == 0:
                    self.save("last.pt")
                if done:
                    break
        if not done:  # resumed a run that had already finished: nothing to train, still write final.pt
            self.save("last.pt", "final.pt")
        bar.close()
        metrics.close()
        return {"iteration": self.iteration, "total_iters": self.total_iters, "skipped_steps": self.skipped,
                "out_dir": str(self.out_dir), "checkpoint": str(self.out_dir / "final.pt"),
                "last": last}


def _postfix(losses: dict[str, float], lr: float) -> dict[str, str]:
    exits = sorted({int(k[4:].split("/")[0]) for k in losses if k.startswith("exit")})
    post = {"loss": f"{losses['loss']:.3f}"}
    post.update({f"e{k}": f"{losses[f'exit{k}/cls'] + losses[f'exit{k}/box']:.3f}" for k in exits})
    post["lr"] = f"{lr:.2e}"
    return post


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def train(run: RunConfig, resume: bool = False, progress: bool = True, dataset=None) -> dict:
    """Train (or resume) a run to the end and return a summary; see ``Trainer``."""
    return Trainer(run, resume=resume, progress=progress, dataset=dataset).run()
