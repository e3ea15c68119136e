"""anytime export end to end: every exit through a real tritonserver equals PyTorch; bad checkpoints touch nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from anytime.cli import main
from anytime.export.repository import read_manifest
from anytime.testing import assert_valid_detections, random_detector, tiny_config
from anytime.train.checkpoint import save_inference_checkpoint
from anytime.serving.triton import TritonServer, free_ports

NAMES = ("boxes", "scores", "labels", "num_detections")


@pytest.fixture(scope="module")
def model():
    return random_detector(tiny_config(repeats=3, score_thresh=0.92), logit_std=0.1)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_inference_checkpoint(model, path, {"class_names": ["a", "b", "c"], "cat_ids": [1, 7, 90]}, half=False)
    return path


@pytest.fixture(scope="module")
def repo(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "repo"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def triton(repo):
    http, grpc_port, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics,
                      model_control_mode="explicit", load_models=("*",)) as server:
        yield server


def _pixels(batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, 128, 128), dtype=np.uint8)


def _as_dict(outputs) -> dict:
    boxes, scores, labels, count = outputs
    return dict(boxes=boxes, scores=scores, labels=labels, count=np.asarray(count).reshape(-1))


def test_manifest_describes_the_exits(repo):
    m = read_manifest(repo)
    assert [e["exit"] for e in m["exits"]] == [1, 2, 3]
    assert m["class_names"] == ["a", "b", "c"] and m["cat_ids"] == [1, 7, 90]
    assert m["image_size"] == 128 and m["input"]["dtype"] == "UINT8"
    assert all(len(e["sha256"]) == 64 and (repo / e["model"] / "1" / "model.onnx").exists() for e in m["exits"])
    assert (repo / "anytime_exit1" / "config.pbtxt").read_text().count("dynamic_batching") == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_exit_through_triton_equals_pytorch(triton, model, protocol):
    client_mod, url = (grpcclient, triton.grpc_url) if protocol == "grpc" else (httpclient, triton.http_url)
    client = client_mod.InferenceServerClient(url)
    x = _pixels()
    for k in (1, 2, 3):
        inp = client_mod.InferInput("images", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        result = client.infer(f"anytime_exit{k}", [inp], outputs=[client_mod.InferRequestedOutput(n) for n in NAMES])
        got = _as_dict([result.as_numpy(n) for n in NAMES])
        assert got["count"].min() > 0
        assert_valid_detections(model, x, k, got)


def test_malformed_inputs_get_a_triton_error_and_the_server_stays_healthy(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    bad = [np.zeros((1, 3, 128, 128), np.float32), np.zeros((1, 3, 64, 64), np.uint8), np.zeros((0, 3, 128, 128), np.uint8)]
    for x in bad:
        inp = grpcclient.InferInput("images", list(x.shape), "FP32" if x.dtype == np.float32 else "UINT8")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException):
            client.infer("anytime_exit1", [inp])
        assert client.is_server_live() and client.is_server_ready()
    good = grpcclient.InferInput("images", [1, 3, 128, 128], "UINT8")
    good.set_data_from_numpy(_pixels(1))
    assert client.infer("anytime_exit1", [good]).as_numpy("num_detections") is not None


def test_explicit_unload_and_load(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    client.unload_model("anytime_exit2")
    assert not client.is_model_ready("anytime_exit2") and client.is_model_ready("anytime_exit1")
    client.load_model("anytime_exit2")
    assert client.is_model_ready("anytime_exit2")


def test_a_truncated_or_foreign_checkpoint_fails_clearly_and_leaves_the_repository_alone(repo, checkpoint, tmp_path, capsys):
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    assert main(["export", "--checkpoint", str(truncated), "--out", str(repo)]) == 2
    assert "truncated" in capsys.readouterr().err
    other = random_detector(tiny_config(repeats=2))
    foreign = tmp_path / "foreign.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {k: v for k, v in other.state_dict().items()}  # weights of another architecture
    torch.save(state, foreign)
    assert main(["export", "--checkpoint", str(foreign), "--out", str(repo)]) == 2
    assert "does not match its config" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(repo)]) == 2
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before


def test_profile_writes_table_plot_and_manifest(repo, triton, checkpoint, tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(["profile", "--repository", str(repo), "--triton", triton.grpc_url, "--checkpoint", str(checkpoint),
                 "--batch-sizes", "1,2", "--runs", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Latency per exit at batch 1" in text and "Triton throughput" in text
    profile = read_manifest(repo)["latency_profile"]
    assert set(profile) >= {"triton", "onnxruntime", "pytorch"}
    assert len(profile["triton"]["exits"]["1"]["1"]["samples_ms"]) == 3
    assert (out / "latency.png").stat().st_size > 1000 and json.loads((out / "profile.json").read_text())
