"""The proxy task: the paper's settings as a preset, rewards on held-out training images (never val),
deterministic data, and a trial that trains with the project's trainer and reports failures as failures."""

from __future__ import annotations

import json

import pytest

from anytime.config import CONFIG_DIR, ConfigError
from anytime.search.proxy import PAPER_HOLDOUT, PROXY_BACKBONE, load_proxy, prepare
from anytime.search.trial import holdout_split, open_sets, run_trial
from anytime.train.config import load_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_paper_preset_is_the_papers_proxy_task(tmp_path):
    with pytest.raises(ConfigError, match="data_dir"):
        load_proxy("paper")  # it needs COCO train2017, which these machines do not have
    p = load_proxy("paper", {"data_dir": str(tmp_path)})
    run = p.run_config("nasfpn")
    model, train = run.model_config(["a", "b"]), run.train
    assert (model.backbone, model.backbone_width, model.image_size, model.repeats) == ("resnet10", 1.0, 512, 3)
    assert (train.epochs, train.milestones, train.gamma, train.schedule) == (10, [8], 0.1, "step")
    assert (train.lr, train.batch_size) == (0.08, 64)
    assert p.holdout == PAPER_HOLDOUT == 7392 and p.backbone_init is None


def test_presets_and_overrides():
    cpu = load_proxy()
    assert cpu.name == "cpu" and cpu.threads == 1 and cpu.backbone_init == "proxy_backbone"
    assert cpu.model["image_size"] == 128 and cpu.num_classes == 4 and cpu.train["max_iters"] == 600
    # cpu256 is the default model's own recipe, shortened: only the schedule's length and the data differ
    near, target = load_proxy("cpu256"), load_run_config(CONFIG_DIR / "default.json")
    run = near.run_config("nasfpn")
    for key in ("image_size", "repeats", "width", "residual_pyramids", "exit_weights", "backbone_width", "head_convs"):
        assert run.model[key] == target.model[key], key
    assert near.num_classes == 10 and run.train.max_iters < target.train.max_iters and near.threads == 1
    custom = load_proxy(None, {"preset": "tiny", "train": {"max_iters": 5}, "reward_images": 8})
    assert custom.train["max_iters"] == 5 and custom.train["batch_size"] == 4 and custom.reward_images == 8
    with pytest.raises(ConfigError, match="unknown proxy preset"):
        load_proxy("huge")
    with pytest.raises(ConfigError, match="unknown proxy config field"):
        load_proxy("tiny", {"epochz": 3})
    with pytest.raises(ConfigError, match="backbone"):
        load_proxy("tiny", {"model": {"backbone": "vgg"}})


def test_data_is_deterministic_and_the_reward_set_is_held_out(tmp_path):
    proxy = load_proxy("tiny", {"train_images": 6, "reward_images": 4})
    a, b = prepare(proxy, tmp_path / "a"), prepare(proxy, tmp_path / "b")
    assert prepare(proxy, tmp_path / "a") == a  # found, not made again
    for part in ("train", "reward"):
        ann = "annotations/instances_train.json"
        assert (tmp_path / "a").joinpath(a[part], ann).read_bytes() == (tmp_path / "b").joinpath(b[part], ann).read_bytes()
        assert json.loads((tmp_path / "a").joinpath(a[part], "annotations/instances_val.json").read_text())["images"] == []
    train_set, reward_set = open_sets(proxy, a, 128)
    assert len(train_set) == 6 and len(reward_set) == 4
    assert train_set.coco.dataset["info"]["seed"] != reward_set.coco.dataset["info"]["seed"]
    assert not reward_set.transform.train and train_set.transform.train


def test_holdout_split_of_a_coco_training_split(tiny_synth_dir):
    train_ids, reward_ids = holdout_split(list(range(1, 17)), 4, seed=1)
    assert len(reward_ids) == 4 and set(train_ids) | set(reward_ids) == set(range(1, 17))
    assert not set(train_ids) & set(reward_ids) and holdout_split(list(range(1, 17)), 4, seed=1)[1] == reward_ids
    proxy = load_proxy("tiny", {"data_dir": str(tiny_synth_dir), "holdout": 4})
    train_set, reward_set = open_sets(proxy, prepare(proxy, tiny_synth_dir.parent / "cache"), 128)
    assert len(train_set) == 12 and len(reward_set) == 4
    assert not set(train_set.ids) & set(reward_set.ids)
    assert str(reward_set.ann_file).endswith("instances_train.json")  # held out from train, never val
    with pytest.raises(ConfigError, match="leaves no training images"):
        holdout_split(list(range(5)), 5, seed=0)


def test_a_trial_trains_and_scores_an_architecture(tmp_path):
    proxy = load_proxy("tiny", {"train": {"max_iters": 4}})
    inputs = prepare(proxy, tmp_path / "cache")
    result = run_trial("nasfpn", proxy, inputs, tmp_path / "trial")
    assert result["status"] == "ok" and 0.0 <= result["reward"] <= 1.0
    assert set(result["metrics"]) == {"AP_exit1"} and result["seconds"] > 0
    assert (tmp_path / "trial" / "train" / "final.pt").is_file()
    spec = json.loads((tmp_path / "trial" / "train" / "config.json").read_text())["model"]
    assert spec["backbone_weights"] == inputs["backbone"] == str(PROXY_BACKBONE)  # the proxies' own weights


def test_the_proxies_backbone_is_their_own_asset_and_both_rewards_come_from_one_trial():
    import torch

    from anytime.search.trial import reward_of

    weights = torch.load(PROXY_BACKBONE, weights_only=True)
    assert "conv1.weight" in weights and PROXY_BACKBONE.stat().st_size < 400_000
    metrics = {"AP_exit1": 0.1, "AP_exit2": 0.2, "AP_exit3": 0.4}
    assert reward_of(metrics, "last") == 0.4 and reward_of(metrics, 1) == 0.1
    assert reward_of(metrics, "mean") == pytest.approx(0.7 / 3)
    with pytest.raises(ValueError, match="exits 1..3"):
        reward_of(metrics, 4)


def test_a_diverging_trial_is_a_failure_not_a_number(tmp_path):
    proxy = load_proxy("tiny", {"train": {"max_iters": 8, "lr": 1e9, "warmup_iters": 0, "grad_clip": None}})
    result = run_trial("nasfpn", proxy, prepare(proxy, tmp_path / "cache"), tmp_path / "trial")
    assert result["status"] == "failed" and result["reward"] is None
    assert "non-finite" in result["error"]
