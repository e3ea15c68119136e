"""Batched Triton calls through the real gateway and a real Triton: every member gets its own answer, its own
error, and a member whose client went away does not take the others with it."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from anytime.export.exporter import export_repository
from anytime.imaging import boxes_to_original
from anytime.serving.api import anytime_pb2 as pb
from anytime.serving.api import anytime_pb2_grpc as pb_grpc
from anytime.serving.gateway import prepare_image
from anytime.serving.scheduler import SchedulerConfig
from anytime.testing import assert_same_detections, in_process_gateway, random_detector, tiny_config

EXITS = 3
BURST = 16


@pytest.fixture(scope="module")
def model():
    return random_detector(tiny_config(repeats=EXITS, width=32, score_thresh=0.97), logit_std=0.1)


@pytest.fixture(scope="module")
def gateway(model, tmp_path_factory):
    """The gateway in this process (so a test can look at its metrics and inject a fault) with one slot, in front
    of a real Triton: a burst queues behind the first call and leaves in batches."""
    repo = tmp_path_factory.mktemp("batched") / "repo"
    export_repository(model, {"class_names": ["a", "b", "c"], "cat_ids": [1, 7, 90]}, repo, stages=False,
                      progress=lambda *_: None)
    with in_process_gateway(repo, scheduler=SchedulerConfig(slots_per_endpoint=1, planner="batch")) as g:
        g.repo = repo
        yield g


def png(seed: int, h=120, w=160) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def _burst(address: str, images: list[bytes], timeouts: list[float] | None = None):
    """Every image at once (one task each); each result is a response or the error's status name."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorStub(channel)

        async def one(i, data):
            try:
                return await stub.Detect(pb.DetectRequest(encoded=data, budget_ms=20_000, request_id=str(i),
                                                          min_exit=EXITS, max_exit=EXITS),
                                         timeout=timeouts[i] if timeouts else 30.0)
            except grpc.aio.AioRpcError as e:
                return e.code().name
        return await asyncio.gather(*(one(i, d) for i, d in enumerate(images)))


def _batched_calls(g) -> float:
    """Triton calls the gateway made with more than one image."""
    registry = g.metrics.registry
    return registry.get_sample_value("anytime_batch_size_count") - registry.get_sample_value(
        "anytime_batch_size_bucket", {"le": "1.0"})


def test_a_batched_call_answers_every_member_with_its_own_detections(gateway, model):
    import onnxruntime as ort

    before = _batched_calls(gateway)
    images = [png(i) for i in range(BURST)]
    answers = asyncio.run(_burst(f"127.0.0.1:{gateway.port}", images))
    assert _batched_calls(gateway) > before, "the burst should have left in batches"
    session = ort.InferenceSession(str(gateway.repo / f"anytime_exit{EXITS}" / "1" / "model.onnx"))
    checked = 0
    for i, (data, r) in enumerate(zip(images, answers)):
        assert not isinstance(r, str), r
        assert r.request_id == str(i) and r.exit == EXITS
        pixels, scale, _ = prepare_image(pb.DetectRequest(encoded=data), model.cfg.image_size, 10**8)
        boxes, scores, labels, count = session.run(None, {"images": pixels})
        n = int(count[0])
        mapped, keep = boxes_to_original(boxes[0, :n].copy(), scale, 120, 160)
        expected = dict(boxes=mapped[keep][None], scores=scores[0, :n][keep][None], labels=labels[0, :n][keep][None],
                        count=np.array([int(keep.sum())]))
        got = dict(boxes=np.array([[[d.x1, d.y1, d.x2, d.y2] for d in r.detections]]).reshape(1, -1, 4),
                   scores=np.array([[d.score for d in r.detections]]).reshape(1, -1),
                   labels=np.array([[[1, 7, 90].index(d.category_id) for d in r.detections]]).reshape(1, -1),
                   count=np.array([len(r.detections)]))
        assert_same_detections(got, expected, 1e-3)
        checked += int(keep.sum()) > 0
    assert checked > BURST // 2  # the images' detections differ, so a mix-up between members would show


def test_a_triton_error_gives_every_member_its_own_status(gateway):
    real = dict(gateway.models)
    gateway.models[EXITS] = "no_such_model"  # Triton answers the whole batch with an error
    try:
        answers = asyncio.run(_burst(f"127.0.0.1:{gateway.port}", [png(100 + i) for i in range(BURST)]))
    finally:
        gateway.models.update(real)
    assert answers and all(a == "INTERNAL" for a in answers), answers
    again = asyncio.run(_burst(f"127.0.0.1:{gateway.port}", [png(7)]))  # and it serves right after
    assert not isinstance(again[0], str)


def test_a_cancelled_member_does_not_fail_the_others(gateway):
    images = [png(200 + i) for i in range(BURST)]
    # every other client gives up almost at once (its call is cancelled, queued or in a batch); the rest wait
    timeouts = [0.002 if i % 2 else 30.0 for i in range(BURST)]
    answers = asyncio.run(_burst(f"127.0.0.1:{gateway.port}", images, timeouts))
    patient = [a for i, a in enumerate(answers) if i % 2 == 0]
    assert all(not isinstance(a, str) and a.exit == EXITS for a in patient), patient
    assert all(a == "DEADLINE_EXCEEDED" or not isinstance(a, str) for i, a in enumerate(answers) if i % 2)
