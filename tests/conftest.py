"""Shared test fixtures, and a check that the suite leaves nothing of ours in the system's temp directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest


def _ours_in_tmp() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("anytime-*")}


def pytest_sessionstart(session):
    session.config.stash[_TMP_KEY] = _ours_in_tmp()


def pytest_sessionfinish(session, exitstatus):
    """Logs go to runs/logs and Ray's session goes with its search: anything named anytime-* that the suite
    leaves in the temp directory fails the run (pytest's own tmp_path retention is not ours)."""
    left = sorted(_ours_in_tmp() - session.config.stash.get(_TMP_KEY, set()))
    if left and session.exitstatus == 0:
        session.config.get_terminal_writer().line(f"left in {tempfile.gettempdir()}: {left}", red=True)
        session.exitstatus = 1


_TMP_KEY = pytest.StashKey[set]()


def make_tiny_detector_onnx(image_size: int = 64, max_detections: int = 5, seed: int = 0) -> bytes:
    """A tiny ONNX model with the exported-exit contract (uint8 images in; boxes/scores/labels/num_detections out).

    Outputs depend on the input pixels (per-channel means through random weights), so a wrong batch split
    or a mix-up between requests shows in the numbers. Built with onnx.helper: no torch import needed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = max_detections
    rng = np.random.default_rng(seed)
    w_box = rng.normal(size=(3, d * 4)).astype(np.float32) * 50
    w_score = rng.normal(size=(3, d)).astype(np.float32) * 4
    inits = [
        numpy_helper.from_array(w_box, "w_box"),
        numpy_helper.from_array(w_score, "w_score"),
        numpy_helper.from_array(np.array([-1, d, 4], np.int64), "box_shape"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
        numpy_helper.from_array(np.array(10.0, np.float32), "ten"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "inv255"], ["xn"]),
        helper.make_node("ReduceMean", ["xn"], ["m"], axes=[2, 3], keepdims=0),  # [N, 3]
        helper.make_node("MatMul", ["m", "w_box"], ["b"]),
        helper.make_node("Reshape", ["b", "box_shape"], ["boxes"]),
        helper.make_node("MatMul", ["m", "w_score"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Mul", ["scores", "ten"], ["s10"]),
        helper.make_node("Floor", ["s10"], ["fl"]),
        helper.make_node("Cast", ["fl"], ["labels"], to=TensorProto.INT64),
        helper.make_node("Greater", ["scores", "half"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["keep_i", "axis1"], ["num_detections"], keepdims=0),
    ]
    s = image_size
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 3, s, s])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", d, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", d]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", d]),
            helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["N"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def tiny_detector_onnx():
    """Factory: ``tiny_detector_onnx(image_size=64, max_detections=5, seed=0) -> bytes``."""
    return make_tiny_detector_onnx


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, spinning OpenMP threads make each step 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_synth_dir(tmp_path_factory):
    """A tiny synthetic COCO dataset (16 train, 4 val images of 64 px)."""
    from anytime.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), num_train=16, num_val=4, image_size=64, progress=False)


def export_tiny_detector(out, exits: int = 3) -> None:
    """Export an untrained tiny detector that still finds things in random images (see ``random_detector``)."""
    from anytime.export.exporter import export_repository
    from anytime.testing import random_detector, tiny_config

    model = random_detector(tiny_config(repeats=exits, score_thresh=0.97), logit_std=0.1)
    export_repository(model, {}, out, progress=lambda *_: None)


@pytest.fixture(scope="session")
def export_tiny():
    """Factory: ``export_tiny(out_dir, exits=3)`` writes a tiny exported repository."""
    return export_tiny_detector


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory):
    """A real Triton and gateway on loopback serving a tiny 3-exit model (shared by the client tests)."""
    from anytime.serving.stack import ServingStack

    repo = tmp_path_factory.mktemp("tiny-stack") / "repo"
    export_tiny_detector(repo)
    with ServingStack(repo) as s:
        yield s
