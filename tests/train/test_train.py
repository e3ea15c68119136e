"""Training: the loss goes down, a kill -9 and --resume give bit-identical weights, clear config/checkpoint errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anytime.config import ConfigError
from anytime.train.checkpoint import (CheckpointError, atomic_save, load_model, read_checkpoint,
                                      save_inference_checkpoint)
from anytime.train.config import RunConfig, load_run_config
from anytime.train.loop import EpochBatches, LRFactor, Trainer, train

TINY_MODEL = {"backbone": "resnet10", "backbone_width": 0.25, "width": 16, "repeats": 2, "image_size": 128}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tiny_synth_dir) -> Path:
    return tiny_synth_dir


def run_config(data_dir: Path, out_dir: Path, **train) -> RunConfig:
    t = dict(data_dir=str(data_dir), out_dir=str(out_dir), batch_size=4, max_iters=6, lr=0.01, warmup_iters=2,
             checkpoint_every=3, log_every=2)
    return RunConfig.from_dict({"model": TINY_MODEL, "train": {**t, **train}})


def write_config(path: Path, run: RunConfig) -> Path:
    path.write_text(json.dumps(run.to_dict()))
    return path


def test_loss_decreases_on_a_fixed_batch(data_dir, tmp_path):
    trainer = Trainer(run_config(data_dir, tmp_path / "run", lr=0.02, warmup_iters=0, max_iters=30), progress=False)
    images, targets = next(iter(trainer.loader(0, 0)))
    losses = [trainer.step(images, targets)["loss"] for _ in range(30)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses
    # The model took its classes from the dataset.
    assert trainer.model_cfg.num_classes == len(trainer.dataset.cat_ids)
    assert trainer.model_cfg.class_names == trainer.dataset.class_names


def test_kill_and_resume_is_exact(data_dir, tmp_path):
    """A: 6 iterations straight. B: killed from outside with SIGKILL once it has checkpointed iteration 2 or
    later, resumed in a new process: the same weights, optimizer state and RNG as A.

    B also uses 2 data-loader workers where A uses none: augmentation must not depend on that either.
    The 16-image set gives 4 iterations per epoch, so B resumes mid-epoch and crosses an epoch boundary.
    """
    summary = train(run_config(data_dir, tmp_path / "A"), progress=False)
    assert summary["iteration"] == 6

    cfg_b = write_config(tmp_path / "b.json", run_config(data_dir, tmp_path / "B", num_workers=2, checkpoint_every=1))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from anytime.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", "--config", str(cfg_b), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last, killed_at, deadline = tmp_path / "B" / "last.pt", None, time.monotonic() + 120
    while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
        if last.exists() and (it := read_checkpoint(last)["iteration"]) >= 2:
            proc.send_signal(signal.SIGKILL)  # a real kill -9, from outside, whatever B is doing right now
            killed_at = it
        time.sleep(0.01)
    assert proc.wait(30) == -signal.SIGKILL, proc.stderr.read()
    assert killed_at is not None and 2 <= read_checkpoint(last)["iteration"] < 6
    assert not (tmp_path / "B" / "final.pt").exists()

    summary = train(load_run_config(cfg_b), resume=True, progress=False)
    assert summary["iteration"] == 6
    a = torch.load(tmp_path / "A" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "B" / "final.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    # The metrics log has each log step once, even though B wrote some of them twice around the crash.
    iters = [json.loads(line)["iter"] for line in (tmp_path / "B" / "metrics.jsonl").read_text().splitlines()]
    assert iters == [2, 4, 6]


def test_non_finite_loss_is_skipped(data_dir, tmp_path, monkeypatch):
    trainer = Trainer(run_config(data_dir, tmp_path / "run"), progress=False)
    images, targets = next(iter(trainer.loader(0, 0)))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = trainer.model.losses

    def nan_losses(*args):
        out = real(*args)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(trainer.model, "losses", nan_losses)
    assert trainer.step(images, targets) is None
    assert trainer.skipped == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics untouched
    monkeypatch.setattr(trainer.model, "losses", real)
    assert math.isfinite(trainer.step(images, targets)["loss"])


def test_config_errors(data_dir, tmp_path, capsys):
    from anytime.cli import main

    with pytest.raises(ConfigError, match="unknown train config field.*bogus"):
        RunConfig.from_dict({"model": TINY_MODEL, "train": {"bogus": 1}})
    with pytest.raises(ConfigError, match="unknown model config field.*wdith"):
        RunConfig.from_dict({"model": {"wdith": 8}})
    with pytest.raises(ConfigError, match="schedule"):
        RunConfig.from_dict({"model": TINY_MODEL, "train": {"schedule": "linear"}})
    with pytest.raises(ConfigError, match="num_classes is 3 but the dataset has 10"):
        Trainer(RunConfig.from_dict({"model": {**TINY_MODEL, "num_classes": 3},
                                     "train": {"data_dir": str(data_dir), "out_dir": str(tmp_path / "x")}}))

    missing = write_config(tmp_path / "missing.json", run_config(tmp_path / "nowhere", tmp_path / "run"))
    assert main(["train", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "data directory" in err and "nowhere" in err and "does not exist" in err
    (tmp_path / "bad.json").write_text(json.dumps({"model": TINY_MODEL, "train": {"epoch": 3}}))
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown train config field(s): epoch" in capsys.readouterr().err
    assert main(["train", "--config", str(missing), "--resume"]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err


def test_checkpoint_files(data_dir, tmp_path):
    trainer = Trainer(run_config(data_dir, tmp_path / "run"), progress=False)
    trainer.save("last.pt")
    path = tmp_path / "run" / "last.pt"
    model, meta = load_model(path)
    assert meta["class_names"] == trainer.dataset.class_names and meta["iteration"] == 0
    assert not model.training

    # fp16 inference checkpoint: smaller, loads back as fp32 with (nearly) the same weights.
    small = save_inference_checkpoint(trainer.model, tmp_path / "small.pt", meta)
    assert small.stat().st_size < 0.6 * path.stat().st_size
    model16, meta16 = load_model(small)
    assert meta16["kind"] == "inference" and meta16["cat_ids"] == meta["cat_ids"]
    for (k, v), v16 in zip(model.state_dict().items(), model16.state_dict().values()):
        assert v16.dtype == v.dtype and torch.allclose(v, v16, rtol=1e-3, atol=1e-4), k

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt cannot be read"):
        load_model(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt is not an anytime checkpoint"):
        load_model(other)
    wrong = tmp_path / "wrong.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["repeats"] = 3  # weights of a 2-pyramid model under a 3-pyramid config
    torch.save(ckpt, wrong)
    with pytest.raises(CheckpointError, match=r'wrong.pt does not match its config: Missing key\(s\) in state_dict: "pyramids.2'):
        load_model(wrong)

    # A failed write leaves the previous file intact and no temp file behind.
    with pytest.raises(Exception):
        atomic_save({"f": lambda: 0}, path)
    assert read_checkpoint(path)["iteration"] == 0
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_schedule_and_sharding():
    f = LRFactor(total_iters=100, warmup_iters=10, warmup_factor=0.1, schedule="step", milestones=[60, 80], gamma=0.1)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1
    assert f(59) == 1 and f(60) == pytest.approx(0.1) and f(80) == pytest.approx(0.01)
    c = LRFactor(100, 0, 1.0, "cosine", [], 0.1)
    assert c(0) == 1 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    # Two processes together see exactly the single-process global batches, from any start position.
    single = list(EpochBatches(10, 4, seed=1, epoch=2, start=1))
    shards = [list(EpochBatches(10, 4, seed=1, epoch=2, start=1, rank=r, world=2)) for r in (0, 1)]
    assert len(single) == 1 and sorted(shards[0][0] + shards[1][0]) == sorted(single[0])
    assert list(EpochBatches(10, 4, 1, 2))[1] == single[0]
    assert list(EpochBatches(10, 4, 1, 3)) != list(EpochBatches(10, 4, 1, 2))


def test_cli_trains_and_writes_an_inference_checkpoint(data_dir, tmp_path, capsys):
    import json as _json

    from anytime.cli import main
    from anytime.train.checkpoint import load_model

    cfg = tmp_path / "run.json"
    cfg.write_text(_json.dumps({"model": TINY_MODEL, "train": {
        "data_dir": str(data_dir), "out_dir": str(tmp_path / "run"), "batch_size": 2, "max_iters": 2,
        "lr": 0.01, "warmup_iters": 1, "log_every": 1, "checkpoint_every": 1}}))
    small = tmp_path / "small.pt"
    assert main(["train", "--config", str(cfg), "--no-progress", "--save-inference", str(small),
                 "--threads", "1", "--seed", "3"]) == 0
    summary = _json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iteration"] == 2 and summary["inference_checkpoint"] == str(small)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["run_config"]["train"]["seed"] == 3
    assert torch.get_num_threads() == 1
    # a resumed run keeps its seed; a bad thread count is refused before anything runs
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--seed", "4", "--no-progress"]) == 2
    assert "keeps its seed" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--threads", "0", "--no-progress"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    # the recipe with only the pyramid swapped
    out = tmp_path / "fpn-cells"
    assert main(["train", "--config", str(cfg), "--pyramid", "fpn-cells", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert read_checkpoint(out / "last.pt")["run_config"]["model"]["pyramid"] == "fpn-cells"
    assert main(["train", "--config", str(cfg), "--pyramid", "no-such-arch", "--no-progress"]) == 2
    assert "no-such-arch" in capsys.readouterr().err
    # one model per depth: N pyramids, the recipe's rising exit weights carried to N exits at the same mean
    weighted = tmp_path / "weighted.json"
    weighted.write_text(_json.dumps({"model": {**TINY_MODEL, "exit_weights": [0.5, 1.5]}, "train": {
        "data_dir": str(data_dir), "batch_size": 2, "max_iters": 1, "lr": 0.01, "warmup_iters": 1}}))
    out = tmp_path / "one"
    assert main(["train", "--config", str(weighted), "--pyramids", "1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    model_cfg = read_checkpoint(out / "last.pt")["run_config"]["model"]
    assert model_cfg["repeats"] == 1 and model_cfg["exit_weights"] == [1.0]
    assert main(["train", "--out", str(out), "--resume", "--pyramids", "2", "--no-progress"]) == 2
    assert "keeps its model" in capsys.readouterr().err
    assert main(["train", "--config", str(weighted), "--pyramids", "0", "--no-progress"]) == 2
    assert "at least one pyramid" in capsys.readouterr().err
    model, meta = load_model(small)
    assert meta["kind"] == "inference" and small.stat().st_size < (tmp_path / "run" / "final.pt").stat().st_size


def test_a_trained_model_outlives_its_architecture_file(data_dir, tmp_path, capsys):
    """A search's best.json lives on the machine that ran the search: the checkpoint embeds the architecture, so
    loading, exporting and resuming need only the checkpoint."""
    from anytime.cli import main
    from anytime.model.spec import PyramidSpec

    arch = tmp_path / "best.json"
    spec = PyramidSpec.load("fpn-cells")
    arch.write_text(json.dumps({**spec.to_dict(), "name": "searched"}))
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"model": TINY_MODEL, "train": {
        "data_dir": str(data_dir), "batch_size": 2, "max_iters": 1, "lr": 0.01, "warmup_iters": 1}}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--pyramid", str(arch), "--out", str(out), "--no-progress"]) == 0
    arch.unlink()
    model, meta = load_model(out / "last.pt")
    assert model.cfg.pyramid == str(arch) and model.cfg.architecture().cells == spec.cells
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "2", "--no-progress"]) == 0
    assert read_checkpoint(out / "last.pt")["iteration"] == 2
    # a run saved before configs embedded their architecture still resumes, from the file it names
    ckpt = read_checkpoint(out / "last.pt")
    for d in (ckpt["model_config"], ckpt["run_config"]["model"]):
        d.pop("pyramid_spec")
    ckpt["run_config"]["model"]["pyramid"] = ckpt["model_config"]["pyramid"] = "fpn-cells"
    atomic_save(ckpt, out / "last.pt")
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "3", "--no-progress"]) == 0
    assert read_checkpoint(out / "last.pt")["model_config"]["pyramid_spec"]["cells"] == spec.to_dict()["cells"]
    # a run's own config, embedded architecture and all, trains another pyramid when --pyramid says so
    again = tmp_path / "again.json"
    again.write_text(json.dumps({**read_checkpoint(out / "last.pt")["run_config"], "train": json.loads(cfg.read_text())["train"]}))
    out2 = tmp_path / "nasfpn"
    assert main(["train", "--config", str(again), "--pyramid", "nasfpn", "--out", str(out2), "--no-progress"]) == 0
    assert load_model(out2 / "last.pt")[0].cfg.architecture() == PyramidSpec.load("nasfpn")
    capsys.readouterr()


def test_multi_resolution_batches_train_one_model_for_several_sizes(data_dir, tmp_path):
    """train.image_sizes (issue 33): each global batch at one size drawn from the list, the same size in every
    process and after a resume; anchors follow the batch; the checkpoint keeps the model's own size."""
    sizes = [128, 256]
    drawn = [b[0][2] for e in range(4) for b in EpochBatches(16, 4, seed=0, epoch=e, image_sizes=sizes)]
    assert set(drawn) == set(sizes)  # both sizes over 16 batches
    shards = [list(EpochBatches(16, 4, 0, 1, rank=r, world=2, image_sizes=sizes)) for r in (0, 1)]
    assert [b[0][2] for b in shards[0]] == [b[0][2] for b in shards[1]]  # every process, the same size
    assert list(EpochBatches(16, 4, 0, 1, start=2, image_sizes=sizes)) == list(EpochBatches(16, 4, 0, 1, image_sizes=sizes))[2:]

    trainer = Trainer(run_config(data_dir, tmp_path / "ms", image_sizes=sizes), progress=False)
    seen = set()
    for images, targets in trainer.loader(0, 0):
        assert images.shape[-1] == images.shape[-2] in sizes
        assert all((t["boxes"] <= images.shape[-1]).all() for t in targets)
        seen.add(images.shape[-1])
        assert trainer.step(images, targets) is not None
        assert trainer.model.cfg.image_size == images.shape[-1] and len(trainer.model.anchors) > 0
    assert seen == set(sizes)
    summary = train(run_config(data_dir, tmp_path / "ms2", image_sizes=sizes), progress=False)
    model, meta = load_model(summary["checkpoint"])
    assert model.cfg.image_size == 128 and meta["train_config"]["image_sizes"] == sizes
    with pytest.raises(ConfigError, match="image_sizes changed"):  # they fix which size each batch had
        Trainer(run_config(data_dir, tmp_path / "ms2", image_sizes=[128]), resume=True, progress=False)

    with pytest.raises(ConfigError, match="multiple of 128"):
        Trainer(run_config(data_dir, tmp_path / "bad", image_sizes=[128, 200]), progress=False)
    with pytest.raises(ConfigError, match="image_sizes"):
        run_config(data_dir, tmp_path / "bad2", image_sizes=[]).train.validate()


def test_a_run_can_start_from_another_runs_weights(data_dir, tmp_path):
    """train.init_checkpoint: fine-tuning starts from that model's weights (and refuses another model's)."""
    first = train(run_config(data_dir, tmp_path / "first", max_iters=2), progress=False)
    trainer = Trainer(run_config(data_dir, tmp_path / "tuned", init_checkpoint=first["checkpoint"],
                                 image_sizes=[128, 256]), progress=False)
    saved = read_checkpoint(Path(first["checkpoint"]))["model"]
    assert all(torch.equal(v.float(), saved[k].float()) for k, v in trainer.model.state_dict().items())
    assert trainer.iteration == 0  # the schedule starts afresh

    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(run_config(data_dir, tmp_path / "x", init_checkpoint=str(tmp_path / "nope.pt")), progress=False)
    other = RunConfig.from_dict({"model": {**TINY_MODEL, "width": 24},
                                 "train": {**run_config(data_dir, tmp_path / "y").train.to_dict(),
                                           "init_checkpoint": first["checkpoint"]}})
    with pytest.raises(ConfigError, match="another model: width differ"):
        Trainer(other, progress=False)
