"""One trial: train an architecture on the proxy task with the project's trainer, then score it.

Runs inside a Ray worker (``ray_runner``), or in-process (benchmarks, tests). It reuses ``anytime.train``
(the same loop, schedule, checkpoint format and seeding as ``anytime train``) and ``anytime.eval``; the only
thing it adds is choosing the data and turning the AP of one exit into a reward.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

from anytime.search.proxy import ProxyConfig

# A trial whose loss was non-finite in more than this fraction of its steps is a failure (its weights barely
# trained), not a low reward that happens to be a number.
MAX_SKIPPED_FRACTION = 0.5


def run_trial(pyramid, proxy: ProxyConfig | dict, inputs: dict, out_dir: str | Path) -> dict:
    """Train ``pyramid`` (a PyramidSpec dict, a built-in name, or "fpn") and evaluate it on the reward set.

    ``inputs`` is ``proxy.prepare``'s result. Returns {"status": "ok"|"failed", "reward", "metrics",
    "seconds", "worker", "error"}. Exceptions propagate (the runner retries them, then records a failure).
    """
    import torch

    from anytime.eval.coco_eval import evaluate
    from anytime.train.checkpoint import load_model
    from anytime.train.loop import Trainer

    t0 = time.perf_counter()
    proxy = proxy if isinstance(proxy, ProxyConfig) else ProxyConfig.from_dict(proxy)
    torch.set_num_threads(proxy.threads)
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # a retried attempt starts from nothing
    out.mkdir(parents=True)
    if isinstance(pyramid, dict):
        (out / "arch.json").write_text(json.dumps(pyramid, indent=2) + "\n")
        pyramid = str(out / "arch.json")
    run = proxy.run_config(pyramid, out_dir=str(out / "train"))
    run.model["backbone_weights"] = inputs.get("backbone")
    image_size = run.model.get("image_size", 256)
    train_set, reward_set = open_sets(proxy, inputs, image_size)

    summary = Trainer(run, progress=False, dataset=train_set).run()
    model, _ = load_model(summary["checkpoint"])
    report = evaluate(model, reward_set, batch_size=proxy.eval_batch_size, progress=False)
    metrics = {f"AP_exit{row['exit']}": row["AP"] for row in report["exits"]}
    reward = reward_of(metrics, proxy.reward_exit)
    skipped, total = summary["skipped_steps"], summary["total_iters"]
    status, error = "ok", None
    if skipped > MAX_SKIPPED_FRACTION * total:
        status, error = "failed", f"non-finite loss in {skipped} of {total} steps"
    elif reward is None or not math.isfinite(reward):
        status, error = "failed", f"non-finite reward {reward!r}"
    for name in ("last.pt",):  # final.pt stays: the trained proxy model of this trial
        (out / "train" / name).unlink(missing_ok=True)
    return {"status": status, "reward": reward if status == "ok" else None, "metrics": metrics,
            "seconds": round(time.perf_counter() - t0, 2), "worker": f"{socket.gethostname()}:{os.getpid()}",
            "error": error, "skipped_steps": skipped}


def reward_of(metrics: dict, reward_exit: int | str) -> float:
    """The reward from a trial's ``AP_exit{k}`` metrics: the last exit's AP, their mean ("mean": an anytime model
    is served at every exit), or exit k's. Either can be computed again from a finished trial's metrics."""
    aps = [metrics[f"AP_exit{k}"] for k in range(1, len(metrics) + 1)]
    if reward_exit == "last":
        return aps[-1]
    if reward_exit == "mean":
        return float(sum(aps) / len(aps))
    if not 1 <= int(reward_exit) <= len(aps):
        raise ValueError(f"proxy.reward_exit {reward_exit} but the proxy model has exits 1..{len(aps)}")
    return aps[int(reward_exit) - 1]


def open_sets(proxy: ProxyConfig, inputs: dict, image_size: int):
    """(training set with augmentation, reward set with the eval transform); never the val split."""
    from anytime.data.coco import CocoDetection, find_split
    from anytime.data.transforms import eval_transform, train_transform

    if inputs.get("reward"):  # synthetic: two seeds of the generator's training split
        train = CocoDetection(*find_split(inputs["train"], "train"), transform=train_transform(image_size))
        reward = CocoDetection(*find_split(inputs["reward"], "train"), transform=eval_transform(image_size))
        return train, reward
    full = CocoDetection(*find_split(inputs["train"], "train"), transform=train_transform(image_size))
    train_ids, reward_ids = holdout_split(full.ids, proxy.holdout, proxy.data_seed)
    train, reward = copy.copy(full), copy.copy(full)  # one annotation load, two views of it
    train.ids, reward.ids = train_ids, reward_ids
    reward.transform = eval_transform(image_size)
    return train, reward


def holdout_split(ids: list, holdout: int, seed: int) -> tuple[list, list]:
    """(training ids, reward ids): ``holdout`` ids drawn with ``seed``; both keep the original order."""
    import numpy as np

    from anytime.config import ConfigError

    if holdout >= len(ids):
        raise ConfigError(f"proxy.holdout {holdout} leaves no training images (the training split has {len(ids)})")
    chosen = set(np.random.default_rng(seed).permutation(len(ids))[:holdout].tolist())
    return ([x for i, x in enumerate(ids) if i not in chosen], [x for i, x in enumerate(ids) if i in chosen])
