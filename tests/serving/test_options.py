"""Options across input sizes, end to end: exported per size beside each exit's own graph, served by a real Triton
and the real gateway, chosen by the scheduler or pinned by the request, answered in the original image's pixels."""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pytest
from PIL import Image

from anytime.cli import main
from anytime.export.repository import read_manifest, sha256_file
from anytime.imaging import boxes_to_original
from anytime.serving.api import anytime_pb2 as pb
from anytime.serving.gateway import prepare_image
from anytime.testing import assert_same_detections, random_detector, tiny_config
from anytime.train.checkpoint import save_inference_checkpoint

CAT_IDS = [1, 7, 90]


@pytest.fixture(scope="module")
def model():
    return random_detector(tiny_config(repeats=3, score_thresh=0.92), logit_std=0.1)  # 128 px, 3 exits


@pytest.fixture(scope="module")
def repo(model, tmp_path_factory):
    """The checkpoint, an evaluation report beside it, and ``anytime export``. The report's APs are chosen (a random
    model has none worth measuring) so that the frontier keeps 128/1-3 (the model's own size, always served) and
    256/2-3, and drops 256/1 (less AP than 128/3 for more compute)."""
    folder = tmp_path_factory.mktemp("options")
    ckpt = folder / "model.pt"
    save_inference_checkpoint(model, ckpt, {"class_names": ["a", "b", "c"], "cat_ids": CAT_IDS}, half=False)
    ap = {128: [0.20, 0.25, 0.28], 256: [0.22, 0.30, 0.32]}
    report = {"checkpoint_sha256": sha256_file(ckpt),
              "exits": [{"exit": k, "AP": v} for k, v in enumerate(ap[128], start=1)],
              "sizes": [{"image_size": s, "exits": [{"exit": k, "AP": v} for k, v in enumerate(aps, start=1)]}
                        for s, aps in ap.items()]}
    ckpt.with_suffix(".eval.json").write_text(json.dumps(report))
    out = folder / "repo"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out


def photo(h=150, w=200, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_the_export_serves_the_frontier_from_each_exits_model(repo):
    m = read_manifest(repo)
    assert [o["name"] for o in m["options"]] == ["128/1", "128/2", "128/3", "256/2", "256/3"]
    assert m["image_size"] == 128 and m["max_image_size"] == 256
    assert sorted(p.name for p in (repo / "anytime_exit3" / "1").glob("*.onnx")) == ["model.onnx", "model_256.onnx"]
    assert not (repo / "anytime_exit1" / "1" / "model_256.onnx").exists()
    # exit 1 takes its one size only; exits 2 and 3 any square size they have a graph for
    assert "dims: 128" in (repo / "anytime_exit1" / "config.pbtxt").read_text()
    assert "dims: -1" in (repo / "anytime_exit3" / "config.pbtxt").read_text()


def test_model_info_names_every_option(stub):
    info = stub.GetModelInfo(pb.ModelInfoRequest())
    assert info.image_size == 128 and info.max_image_size == 256
    assert [(o.name, o.image_size, o.exit) for o in info.options] == [
        ("128/1", 128, 1), ("128/2", 128, 2), ("128/3", 128, 3), ("256/2", 256, 2), ("256/3", 256, 3)]
    assert all(o.gmacs > 0 and o.ap > 0 for o in info.options)
    assert info.options[-1].gmacs > 3 * info.options[0].gmacs
    (endpoint,) = info.endpoints
    assert [(p.image_size, p.exit) for p in endpoint.option_profile] == [(o.image_size, o.exit) for o in info.options]
    assert [p.exit for p in endpoint.profile] == [1, 2, 3]  # the model's own size, as before options
    assert all(p.p50_ms > 0 for p in endpoint.option_profile)


@pytest.mark.parametrize("option", ["128/1", "256/3", "256/2"])
def test_a_pinned_option_answers_in_the_original_images_pixels(stub, repo, option):
    """The answer at any size is that size's graph on the image letterboxed to it, mapped back to the image sent."""
    import onnxruntime as ort

    size, exit = (int(x) for x in option.split("/"))
    data = photo()
    r = stub.Detect(pb.DetectRequest(encoded=data, budget_ms=10_000, option=option))
    assert (r.image_size, r.exit, r.budget_met) == (size, exit, True)
    pixels, scale, _ = prepare_image(pb.DetectRequest(encoded=data), size, 10**8)
    graph = "model.onnx" if size == 128 else f"model_{size}.onnx"
    boxes, scores, labels, count = ort.InferenceSession(str(repo / f"anytime_exit{exit}" / "1" / graph)).run(
        None, {"images": pixels})
    n = int(count[0])
    mapped, keep = boxes_to_original(boxes[0, :n].copy(), scale, 150, 200)
    expected = dict(boxes=mapped[keep][None], scores=scores[0, :n][keep][None], labels=labels[0, :n][keep][None],
                    count=np.array([int(keep.sum())]))
    got = dict(boxes=np.array([[[d.x1, d.y1, d.x2, d.y2] for d in r.detections]]).reshape(1, -1, 4),
               scores=np.array([[d.score for d in r.detections]]),
               labels=np.array([[CAT_IDS.index(d.category_id) for d in r.detections]]),
               count=np.array([len(r.detections)]))
    assert n > 0
    assert_same_detections(got, expected, 1e-3)
    assert all(0 <= d.x1 <= d.x2 <= 200 and 0 <= d.y1 <= d.y2 <= 150 for d in r.detections)


def test_the_scheduler_chooses_size_and_depth_within_the_requests_limits(stub):
    data = photo(seed=1)
    loose = stub.Detect(pb.DetectRequest(encoded=data, budget_ms=10_000))
    assert (loose.image_size, loose.exit) == (256, 3)  # time for everything: the most accurate option
    first = stub.Detect(pb.DetectRequest(encoded=data, budget_ms=10_000, max_exit=1))
    assert (first.image_size, first.exit) == (128, 1)  # exit 1 is served at the model's size only
    middle = stub.Detect(pb.DetectRequest(encoded=data, budget_ms=10_000, min_exit=2, max_exit=2))
    assert (middle.image_size, middle.exit) == (256, 2)  # depth limited, the size still chosen


def test_an_option_that_is_not_served_is_a_clear_error_and_serving_goes_on(stub):
    for bad in ("256/1", "384/3", "big"):
        with pytest.raises(grpc.RpcError) as e:
            stub.Detect(pb.DetectRequest(encoded=photo(), budget_ms=10_000, option=bad))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "128/1, 128/2" in e.value.details()
    assert stub.Detect(pb.DetectRequest(encoded=photo(), budget_ms=10_000)).exit == 3


def test_detect_json_names_the_option_and_letterboxes_to_the_largest_size(stack, tmp_path, capsys):
    """``anytime detect --json``: the answer's size and exit; ``--letterbox`` alone letterboxes to max_image_size
    here, and the gateway scales the raw pixels down to the pinned option's size."""
    image = tmp_path / "photo.png"
    image.write_bytes(photo(300, 400, seed=2))
    assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "5000", "--json",
                 "--option", "128/2", "--letterbox"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (answer["image_size"], answer["exit"]) == (128, 2)
    assert all(0 <= d["x2"] <= 400 and 0 <= d["y2"] <= 300 for d in answer["detections"])
    assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "5000"]) == 0
    assert "at 256 px" in capsys.readouterr().out


def test_direct_peers_send_an_option_or_choose_one_by_slack(stack, repo):
    """The peers of benchmarks/peers.py: always one option straight to Triton, and slack over options (the most
    expensive option whose idle p95 of decoding and calling fits the time left at arrival)."""
    import asyncio

    from anytime.clients.direct import DirectClient, run_trace
    from anytime.clients.loadgen import RequestRecord

    payloads = [photo(seed=i) for i in range(4)]

    async def go(budget_ms: float, **sender):
        client = DirectClient(stack.tritons[0].grpc_url, read_manifest(repo))
        try:
            if sender.pop("slack", False):
                p95 = await client.idle_p95_options(payloads[0], warmup=1, runs=3)
                assert list(p95) == ["128/1", "128/2", "128/3", "256/2", "256/3"] and all(v > 0 for v in p95.values())
                sender["option_p95"] = p95
            records = [RequestRecord(i, budget_ms, 0.05 * i) for i in range(4)]
            await run_trace(records, client.sender(payloads, **sender))
            return records
        finally:
            await client.close()

    pinned = asyncio.run(go(10_000, option="256/2"))
    assert all(r.status == "OK" and (r.image_size, r.exit) == (256, 2) and r.budget_met for r in pinned)
    roomy = asyncio.run(go(10_000, slack=True))
    assert all(r.status == "OK" and (r.image_size, r.exit) == (256, 3) for r in roomy)  # everything fits
    hopeless = asyncio.run(go(0.001, slack=True))  # nothing fits: the cheapest, and no time left for it
    assert all(r.status != "OK" or (r.image_size, r.exit) == (128, 1) for r in hopeless)
