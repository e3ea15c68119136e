"""``anytime detect`` against a real gateway and Triton on loopback, serving a tiny exported model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anytime.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tiny_stack):
    return tiny_stack


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
    from anytime.serving.triton import free_ports

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


# grpcio, protobuf, numpy, Pillow, and what pip installs with them (grpcio requires typing-extensions)
THIN_PACKAGES = ("grpc", "grpcio-*.dist-info", "typing_extensions.py", "typing_extensions-*.dist-info", "google",
                 "protobuf-*.dist-info", "numpy", "numpy.libs", "numpy-*.dist-info", "PIL", "pillow.libs",
                 "pillow-*.dist-info")


@pytest.fixture(scope="module")
def thin_site(tmp_path_factory):
    """A site directory holding only grpcio, protobuf, numpy and Pillow with their dependencies (links into this
    venv's copies): what a fresh virtual environment with those four packages has. No torch, no tritonclient, no
    anytime install."""
    import glob
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    thin = tmp_path_factory.mktemp("thin-site")
    for pattern in THIN_PACKAGES:
        matches = glob.glob(str(site / pattern))
        assert matches, f"{pattern} not in {site}"
        for m in matches:
            (thin / Path(m).name).symlink_to(m)
    return thin


def _run_thin(thin: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """Run clients/detect.py (or ``code``) with Python's standard library and the thin site only (``-S``: no
    site-packages of this venv)."""
    boot = (f"import runpy, sys; sys.path.insert(0, {str(thin)!r}); "
            + (code or f"sys.argv = [{str(ROOT / 'clients' / 'detect.py')!r}, *{list(args)!r}]; "
                       f"runpy.run_path(sys.argv[0], run_name='__main__')"))
    return subprocess.run([sys.executable, "-S", "-c", boot], capture_output=True, text=True, timeout=120, cwd="/")


def test_the_thin_site_has_no_model_stack(thin_site):
    for name in ("torch", "tritonclient", "onnxruntime"):
        r = _run_thin(thin_site, code=f"import {name}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, name


def test_the_thin_client_runs_with_grpc_protobuf_numpy_and_pillow_only(stack, image, thin_site, tmp_path):
    out = tmp_path / "drawn.png"
    r = _run_thin(thin_site, str(image), "--server", stack.address, "--budget-ms", "1000", "--json", "--draw", str(out))
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["exit"] == 3 and answer["detections"] and answer["client_ms"] > 0
    assert out.exists()
    r = _run_thin(thin_site, str(image), "--server", stack.address, "--budget-ms", "1000")
    assert r.returncode == 0 and "exit 3 of [1, 2, 3]" in r.stdout and "client:" in r.stdout
    r = _run_thin(thin_site, str(tmp_path / "missing.png"), "--server", stack.address)
    assert r.returncode == 2 and "cannot read image" in r.stderr


def test_a_client_that_letterboxes_gets_the_same_answer_in_the_images_pixels(stack, tmp_path, capsys):
    """``--letterbox``: the client prepares the image with the gateway's own function and sends raw pixels; the
    model sees the same input, and the boxes come back mapped onto the original image (a large JPEG, decoded at a
    reduced size by both)."""
    from anytime.imaging import letterbox, open_image

    path = tmp_path / "big.jpg"
    big = np.random.default_rng(2).integers(0, 255, (60, 80, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
    Image.fromarray(big).save(path, quality=90)  # 800 x 600: blocky noise the tiny model finds things in

    def answer(*extra):
        assert main(["detect", str(path), "--server", stack.address, "--budget-ms", "5000", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    encoded, letterboxed, sized = answer(), answer("--letterbox"), answer("--letterbox", "64")
    assert encoded["detections"], "the test needs detections to compare"
    assert letterboxed["exit"] == encoded["exit"] and len(letterboxed["detections"]) == len(encoded["detections"])
    for a, b in zip(encoded["detections"], letterboxed["detections"]):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-4
        assert all(abs(a[k] - b[k]) < 0.01 for k in ("x1", "y1", "x2", "y2"))  # original pixels, both
    assert all(0 <= d["x1"] < d["x2"] <= 800 and 0 <= d["y1"] < d["y2"] <= 600 for d in sized["detections"])
    # what the client sent is what the gateway would have made of the photo
    pixels, scale = letterbox(open_image(path.read_bytes()), 64)
    assert scale == 64 / 800 and pixels.shape == (3, 64, 64)


def test_letterbox_errors_are_the_clients(stack, tmp_path, capsys):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["detect", str(path), "--server", stack.address, "--letterbox", "64"]) == 2
    assert "cannot letterbox" in capsys.readouterr().err
