"""Progressive execution's pieces: the stage graphs chain into exactly the exits, and the decoupled progressive
model in a real tritonserver streams each exit as it is reached, batches stages, and stops when cancelled."""

from __future__ import annotations

import queue
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as tc

from anytime.export.exporter import export_repository
from anytime.export.onnx import (CANDIDATE_NAMES, OUTPUT_NAMES, export_exit, export_features, export_head,
                                 features_io, head_io)
from anytime.export.verify import NmsSettings, check_candidates, check_nms
from anytime.serving.triton import TritonServer, free_ports
from anytime.testing import random_detector, scrape, scrape_settled, scrape_until, tiny_config

EXITS = 4


@pytest.fixture(scope="module")
def model():
    return random_detector(tiny_config(repeats=EXITS, width=32, score_thresh=0.97, residual_pyramids=True),
                           logit_std=0.1)


def test_the_stage_chain_computes_exactly_the_exits(model):
    """Each stage's features on the previous one's, in ONNX Runtime, and exit k's head on stage k's: every exit's
    candidates equal the monolithic exit graph's, and its detections are a valid NMS of PyTorch's."""
    images = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    feed = {"images": images.numpy()}
    head_in, head_out = head_io(model)
    for k in range(1, EXITS + 1):
        stage = ort.InferenceSession(export_features(model, k))
        names_in, names_out = features_io(model, k)
        assert [i.name for i in stage.get_inputs()] == list(names_in)
        feats = stage.run(list(names_out), feed)
        head = ort.InferenceSession(export_head(model, k, with_candidates=True))
        out = dict(zip(head_out + CANDIDATE_NAMES, head.run(list(head_out + CANDIDATE_NAMES), dict(zip(head_in, feats)))))
        exit_graph = ort.InferenceSession(export_exit(model, k, with_candidates=True))
        mono = dict(zip(OUTPUT_NAMES + CANDIDATE_NAMES, exit_graph.run(None, {"images": images.numpy()})))
        check_candidates(out["candidate_scores"], out["candidate_boxes"], mono["candidate_scores"],
                         mono["candidate_boxes"], 128)
        with torch.no_grad():
            ref = model(images, exit=k, with_candidates=True)
        check_nms(dict(boxes=out["boxes"], scores=out["scores"], labels=out["labels"], count=out["num_detections"]),
                  ref[4].numpy(), ref[5].numpy(), NmsSettings.of(model.cfg))
        feed = dict(zip(head_in, feats))  # the next stage's features input: this stage's output


@pytest.fixture(scope="module")
def triton(model, tmp_path_factory):
    repo = tmp_path_factory.mktemp("progressive") / "repo"
    export_repository(model, {}, repo, verify=False, progress=lambda *_: None)
    http, grpc_port, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as server:
        yield server


def _request(budget_ms: float, exits=(1, 0), seed=0, every_exit=True):
    inputs = [tc.InferInput("images", [1, 3, 128, 128], "UINT8"), tc.InferInput("budget_ms", [1], "FP64"),
              tc.InferInput("exits", [2], "INT32"), tc.InferInput("every_exit", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.random.default_rng(seed).integers(0, 256, (1, 3, 128, 128), dtype=np.uint8))
    inputs[1].set_data_from_numpy(np.array([budget_ms], np.float64))
    inputs[2].set_data_from_numpy(np.array(exits, np.int32))
    inputs[3].set_data_from_numpy(np.array([int(every_exit)], np.int32))
    return inputs


def _stream(server):
    client = tc.InferenceServerClient(server.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    return client, answers


def _collect(answers, n_requests: int, timeout=30.0) -> dict[str, list]:
    """request id -> [exit, ...] in arrival order, or an error string; until every request sent its final."""
    got, finals = {}, 0
    while finals < n_requests:
        result, error = answers.get(timeout=timeout)
        if error is not None:
            got.setdefault(error.request_id() if hasattr(error, "request_id") else "?", []).append(str(error))
            finals += 1
            continue
        rid = result.get_response().id
        exit = int(result.as_numpy("exit")[0])
        if exit:
            got.setdefault(rid, []).append(exit)
        if result.as_numpy("final")[0]:
            finals += 1
    return got


def test_exits_stream_in_increasing_order_and_an_impossible_budget_is_an_error(triton):
    client, answers = _stream(triton)
    try:
        client.async_stream_infer("anytime_progressive", _request(10_000), request_id="deep")
        client.async_stream_infer("anytime_progressive", _request(10_000, exits=(1, 2)), request_id="capped")
        got = _collect(answers, 2)
        assert got["deep"] == [1, 2, 3, 4] and got["capped"] == [1, 2]
        client.async_stream_infer("anytime_progressive", _request(0.01), request_id="hopeless")
        result, error = answers.get(timeout=30)
        assert error is not None and "no exit can be computed within the budget" in str(error)
    finally:
        client.stop_stream()


def test_an_answer_alone_runs_only_its_own_head(triton):
    """Without every_exit, a request with time for exit 4 gets exit 4 alone: heads 1-3 never run for it."""
    heads = {k: scrape_settled(triton.metrics_url, "anytime_stage_images", stage=str(k), part="head")
             for k in range(1, 5)}
    client, answers = _stream(triton)
    try:
        client.async_stream_infer("anytime_progressive", _request(10_000, every_exit=False), request_id="lazy")
        got = _collect(answers, 1)
    finally:
        client.stop_stream()
    assert got == {"lazy": [EXITS]}
    # head 4's count is written after heads 1-3 would have been (one writer thread, in the order of the steps)
    scrape_until(triton.metrics_url, "anytime_stage_images", lambda v: v > heads[EXITS], stage=str(EXITS), part="head")
    assert {k: scrape(triton.metrics_url, "anytime_stage_images", stage=str(k), part="head") - v
            for k, v in heads.items()} == {1: 0, 2: 0, 3: 0, 4: 1}


def test_sixteen_streams_at_once_each_run_every_step_once(triton):
    """16 streams sent at once: each gets every exit, and each step runs once per request (in calls of one or
    more: whether sharing a call pays is the engine's judgement, tested on a simulated clock in
    tests/serving/test_progressive.py, since on a CPU a batch can cost its size in time)."""
    runs = scrape_settled(triton.metrics_url, "anytime_stage_runs")
    images = scrape_settled(triton.metrics_url, "anytime_stage_images")
    client, answers = _stream(triton)
    try:
        for i in range(16):
            client.async_stream_infer("anytime_progressive", _request(10_000, seed=i), request_id=str(i))
        got = _collect(answers, 16)
    finally:
        client.stop_stream()
    assert all(v == [1, 2, 3, 4] for v in got.values()) and len(got) == 16
    expected = images + 16 * 2 * EXITS
    images = scrape_until(triton.metrics_url, "anytime_stage_images", lambda v: v >= expected) - images
    runs = scrape(triton.metrics_url, "anytime_stage_runs") - runs  # written before the images of the same calls
    assert images == 16 * 2 * EXITS and 0 < runs <= images, (runs, images)


def test_a_cancelled_request_runs_no_further_stage(triton):
    deepest = scrape_settled(triton.metrics_url, "anytime_stage_images", stage=str(EXITS))
    cancelled = scrape_settled(triton.metrics_url, "anytime_progressive_requests", outcome="cancelled")
    client = tc.InferenceServerClient(triton.grpc_url)
    first = queue.Queue()
    client.start_stream(callback=lambda result, error: first.put(result))
    client.async_stream_infer("anytime_progressive", _request(10_000), request_id="gone")
    progress = first.get(timeout=30)  # the first stage is done
    assert progress.as_numpy("exit")[0] == 0 and progress.as_numpy("final")[0] == 0
    assert first.get(timeout=30).as_numpy("exit")[0] == 1
    client.stop_stream(cancel_requests=True)  # the client goes away after its first exit
    deadline = time.monotonic() + 10
    while scrape(triton.metrics_url, "anytime_progressive_requests", outcome="cancelled") == cancelled:
        assert time.monotonic() < deadline, "the engine never saw the cancellation"
        time.sleep(0.05)
    assert scrape(triton.metrics_url, "anytime_stage_images", stage=str(EXITS)) == deepest
