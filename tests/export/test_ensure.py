"""Serve and the demo export only when the repository needs it, and then in a child process (the serving process
never imports torch): the decision from the manifest, the child's command, its failure, one real export."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anytime.export import ensure
from anytime.export.ensure import ExportFailed, ensure_exported, export_needed
from anytime.export.repository import read_manifest, sha256_file, write_manifest

SPLIT_STAGES = {"model": "anytime_progressive", "stages": [{"stage": 1, "features": "features1.onnx", "head": "head1.onnx"}]}


def _manifest(repo, checkpoint, progressive=None, options=True):
    manifest = {"exits": [{"exit": 1, "model": "anytime_exit1"}], "image_size": 64, "max_detections": 5,
                "progressive": progressive, "checkpoint_sha256": sha256_file(checkpoint)}
    if options:
        manifest["options"] = [{"image_size": 64, "exit": 1, "model": "anytime_exit1"}]
    write_manifest(repo, manifest)


def test_whether_an_export_is_needed_comes_from_the_manifest(tmp_path):
    repo, ckpt, other = tmp_path / "repo", tmp_path / "a.pt", tmp_path / "b.pt"
    ckpt.write_bytes(b"weights a")
    other.write_bytes(b"weights b")
    assert export_needed(repo, ckpt, stages=False)  # no export at all
    _manifest(repo, ckpt, options=False)  # an export from before input sizes were options
    assert export_needed(repo, ckpt, stages=False)
    _manifest(repo, ckpt)
    assert not export_needed(repo, ckpt, stages=False)
    assert export_needed(repo, ckpt, stages=True)  # progressive execution needs the stages
    _manifest(repo, ckpt, {"model": "anytime_progressive", "stages": [{"stage": 1, "features": "f1.onnx"}]})
    assert export_needed(repo, ckpt, stages=True)  # stages from before they were split in features and head
    _manifest(repo, ckpt, SPLIT_STAGES)
    assert not export_needed(repo, ckpt, stages=True)
    assert not export_needed(repo, other)  # an existing export is served as it is...
    assert export_needed(repo, other, replace_stale=True)  # ...unless it must be of this very checkpoint
    assert not export_needed(repo, ckpt, replace_stale=True)


def test_the_export_runs_as_a_child_process_and_its_failure_is_an_error(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode=len(calls) - 1)  # succeeds once, then fails

    monkeypatch.setattr(ensure.subprocess, "run", fake_run)
    repo, ckpt = tmp_path / "repo", tmp_path / "m.pt"
    assert ensure_exported(repo, ckpt, progress=lambda *_: None) == repo
    assert calls == [[sys.executable, "-m", "anytime", "export", "--checkpoint", str(ckpt), "--out", str(repo)]]
    with pytest.raises(ExportFailed, match="exited with status 1"):
        ensure_exported(repo, ckpt, progress=lambda *_: None)
    ckpt.write_bytes(b"weights")
    _manifest(repo, ckpt, SPLIT_STAGES)
    ensure_exported(repo, ckpt, replace_stale=True, progress=lambda *_: None)
    assert len(calls) == 2  # nothing to do: no child


def test_a_real_export_in_a_child_process(tmp_path, capfd, monkeypatch, one_torch_thread):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child's torch too: spinning threads are slow on 2 shared cores
    from anytime.testing import random_detector, tiny_config
    from anytime.train.checkpoint import save_inference_checkpoint

    ckpt, repo = tmp_path / "m.pt", tmp_path / "repo"
    save_inference_checkpoint(random_detector(tiny_config(repeats=2), logit_std=0.1), ckpt, {}, half=False)
    ensure_exported(repo, ckpt, replace_stale=True)
    manifest = read_manifest(repo)
    assert [e["exit"] for e in manifest["exits"]] == [1, 2] and len(manifest["progressive"]["stages"]) == 2
    assert manifest["checkpoint_sha256"] == sha256_file(ckpt) and not export_needed(repo, ckpt, replace_stale=True)
    assert "wrote 2 exits and 2 stages" in capfd.readouterr().out  # the child's output is this process's
