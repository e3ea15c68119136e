"""``anytime detect`` against a real gateway and Triton on loopback, serving a tiny exported model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anytime.cli import main
from server.stack import ServingStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, export_tiny):
    repo = tmp_path_factory.mktemp("detect") / "repo"
    export_tiny(repo)
    with ServingStack(repo) as s:
        yield s


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "noise.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_detect_prints_summary_and_detections(stack, image, capsys):
    assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "1000"]) == 0
    out = capsys.readouterr().out
    assert "exit 3 of [1, 2, 3]" in out and "met" in out and "timing: queue" in out
    lines = [line for line in out.splitlines() if line.startswith("  ") and "score" in line]
    assert lines and all("box [" in line and "id " in line for line in lines)


def test_detect_json_and_exit_limits(stack, image, capsys):
    assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "1000", "--max-exit", "2",
                 "--score-threshold", "0.3", "--deadline-ms", "5000", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["exit"] == 2 and answer["exits_available"] == [1, 2, 3] and answer["budget_met"] is True
    assert answer["request_id"] == image.name and answer["timing"]["budget_ms"] == pytest.approx(1000)
    assert answer["detections"] and all(d["score"] >= 0.3 for d in answer["detections"])
    assert {"x1", "y1", "x2", "y2", "category_id", "category_name"} <= set(answer["detections"][0])


def test_detect_draw_writes_image_of_same_size(stack, image, tmp_path, capsys):
    out = tmp_path / "drawn" / "out.png"
    assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "1000", "--draw", str(out)]) == 0
    with Image.open(out) as drawn:
        assert drawn.format == "PNG" and drawn.size == (150, 100)
        assert np.asarray(drawn.convert("RGB")).tolist() != np.asarray(Image.open(image).convert("RGB")).tolist()
    assert f"drawn: {out}" in capsys.readouterr().out


def test_detect_other_formats_are_reencoded(stack, tmp_path, capsys):
    path = tmp_path / "grey.bmp"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60), dtype=np.uint8), "L").save(path)
    assert main(["detect", str(path), "--server", stack.address, "--budget-ms", "1000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit"] == 3


def test_corrupt_image_is_an_invalid_argument(stack, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    assert main(["detect", str(bad), "--server", stack.address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anytime detect: error: INVALID_ARGUMENT: ")


def test_impossible_budget_is_deadline_exceeded(stack, image, capsys):
    assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("anytime detect: error: DEADLINE_EXCEEDED: ")


def test_missing_image_is_a_user_error(stack, tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.png"), "--server", stack.address]) == 2
    assert "anytime detect: error: cannot read image" in capsys.readouterr().err


def test_unreachable_server_is_unavailable(image, capsys):
    from server.triton import free_ports

    (port,) = free_ports(1)
    assert main(["detect", str(image), "--server", f"127.0.0.1:{port}", "--deadline-ms", "3000"]) == 1
    assert capsys.readouterr().err.startswith("anytime detect: error: UNAVAILABLE: ")


def test_token_is_sent_as_bearer_metadata(stack, image, capsys):
    """Last: restarts the module's gateway with --token, then without it again."""
    stack.stop_gateway()
    stack.gateway_args = ("--token", "s3cret")
    try:
        stack.start_gateway()
        assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "1000", "--json"]) == 1
        assert capsys.readouterr().err.startswith("anytime detect: error: UNAUTHENTICATED: ")
        assert main(["detect", str(image), "--server", stack.address, "--budget-ms", "1000", "--json",
                     "--token", "s3cret"]) == 0
        assert json.loads(capsys.readouterr().out)["exit"] == 3
    finally:
        stack.stop_gateway()
        stack.gateway_args = ()
        stack.start_gateway()
