"""A real tritonserver (pytriton's bundled binary) serving a 2-exit repository on loopback; no mocks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from anytime.export.repository import model_name, write_manifest, write_model_dir
from anytime.serving.triton import TritonServer, TritonServerError, free_ports, port_is_free

S, D = 64, 5
MODELS = [model_name(0), model_name(1)]
OUTPUTS = ("boxes", "scores", "labels", "num_detections")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_detector_onnx):
    root = tmp_path_factory.mktemp("triton") / "model_repository"
    blobs = {}
    for k, name in enumerate(MODELS):
        blobs[name] = tiny_detector_onnx(S, D, seed=k)
        write_model_dir(root, name, blobs[name], image_size=S, max_detections=D, intra_op_threads=1)
    write_manifest(root, {"exits": MODELS, "image_size": S, "max_detections": D, "class_names": ["a", "b"]})
    return root, blobs


@pytest.fixture(scope="module")
def reference(repo):
    """ONNX Runtime run directly on the very files the server serves."""
    root, _ = repo
    return {name: ort.InferenceSession(str(root / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]) for name in MODELS}


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """One supervised server per module, in explicit mode with both models loaded at startup."""
    http, grpc, metrics = free_ports(3)
    srv = TritonServer(
        repo[0], http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit",
        load_models=tuple(MODELS), restart=True, restart_backoff_s=0.2,
        log_file=tmp_path_factory.mktemp("logs") / "tritonserver.log",
    )
    srv.start()
    try:
        srv.ready_after_s = srv.wait_ready(60)
        yield srv
    finally:
        srv.stop()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, S, S), dtype=np.uint8)


def check(outputs: dict[str, np.ndarray], session: ort.InferenceSession, x: np.ndarray) -> None:
    want = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": x})))
    n = x.shape[0]
    # Triton exposes num_detections as [n, 1] (config dims [1] reshaped to the graph's [n])
    assert outputs["num_detections"].shape == (n, 1)
    assert outputs["boxes"].shape == (n, D, 4) and outputs["scores"].shape == (n, D) and outputs["labels"].shape == (n, D)
    for name in ("boxes", "scores"):
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], want[name], rtol=1e-5, atol=1e-4)
    for name in ("labels", "num_detections"):
        assert outputs[name].dtype == np.int64
        np.testing.assert_array_equal(outputs[name].reshape(want[name].shape), want[name])


def grpc_infer(server, model, x, dtype="UINT8"):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("images", list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS])
        return {o: result.as_numpy(o) for o in OUTPUTS}
    finally:
        client.close()


def http_infer(server, model, x):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inp = httpclient.InferInput("images", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS])
        return {o: result.as_numpy(o) for o in OUTPUTS}
    finally:
        client.close()


def test_server_becomes_ready(server):
    assert server.is_alive() and server.is_ready()
    assert server.ready_after_s < 30
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert all(client.is_model_ready(m) for m in MODELS)
    assert client.get_model_metadata(MODELS[0]).inputs[0].shape == [-1, 3, S, S]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 3])
def test_infer_grpc_matches_onnxruntime(server, reference, model, batch):
    x = images(batch, seed=batch)
    check(grpc_infer(server, model, x), reference[model], x)


@pytest.mark.parametrize("batch", [1, 3])
def test_infer_http_matches_onnxruntime(server, reference, batch):
    x = images(batch, seed=10 + batch)
    check(http_infer(server, MODELS[1], x), reference[MODELS[1]], x)


def test_concurrent_requests_get_their_own_results(server, reference):
    """Requests the dynamic batcher merges into one ORT call are split back to the right senders."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    batches = [images(n, seed=100 + i) for i, n in enumerate([1, 2, 1, 3, 1, 2])]
    futures = []
    for x in batches:
        inp = grpcclient.InferInput("images", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        fut = Future()
        client.async_infer(MODELS[0], [inp], callback=lambda result, error, fut=fut: fut.set_result((result, error)))
        futures.append(fut)
    for x, fut in zip(batches, futures):
        result, error = fut.result(timeout=30)
        assert error is None
        check({o: result.as_numpy(o) for o in OUTPUTS}, reference[MODELS[0]], x)
    client.close()


@pytest.mark.parametrize(
    "x, dtype, message",
    [
        (np.zeros((1, 3, S, S), np.float32), "FP32", "data-type"),
        (np.zeros((1, 3, 32, 32), np.uint8), "UINT8", "shape"),
        (np.zeros((0, 3, S, S), np.uint8), "UINT8", "images"),
    ],
    ids=["fp32", "wrong-size", "empty-batch"],
)
def test_malformed_input_is_an_error_and_server_stays_healthy(server, reference, x, dtype, message):
    with pytest.raises(InferenceServerException, match=message):
        grpc_infer(server, MODELS[0], x, dtype=dtype)
    assert server.is_ready()
    good = images(2, seed=7)
    check(grpc_infer(server, MODELS[0], good), reference[MODELS[0]], good)


def test_explicit_unload_and_load(server, reference):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    name = MODELS[1]
    client.unload_model(name)
    deadline = time.monotonic() + 20
    while client.is_model_ready(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not client.is_model_ready(name)
    with pytest.raises(InferenceServerException):
        grpc_infer(server, name, images(1, seed=0))
    client.load_model(name)  # blocks until loaded
    assert client.is_model_ready(name)
    x = images(2, seed=3)
    check(grpc_infer(server, name, x), reference[name], x)
    client.close()


def test_wait_ready_reports_a_dead_server_with_its_log(tmp_path):
    (tmp_path / "repo").mkdir()
    http, grpc, metrics = free_ports(3)
    with socket.socket() as taken:  # Triton cannot bind its HTTP port, so it exits
        taken.bind(("127.0.0.1", http))
        taken.listen()
        srv = TritonServer(tmp_path / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=tmp_path / "log")
        srv.start()
        try:
            with pytest.raises(TritonServerError, match="exited with status") as err:
                srv.wait_ready(30)
        finally:
            srv.stop()
    assert str(tmp_path / "log") in str(err.value) and "tritonserver" in str(err.value)
    assert not srv.is_alive()


def test_cli_errors_on_missing_or_empty_repository(tmp_path):
    import argparse

    from anytime.cli import UserError
    from anytime.serving import cli

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    for repository, message in ((tmp_path / "nope", "does not exist"), (tmp_path, "holds no model")):
        args = parser.parse_args(["triton", "--repository", str(repository)])
        with pytest.raises(UserError, match=message):
            args.func(args)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"')
    args = parser.parse_args(["triton", "--repository", str(tmp_path), "--load-model", "m"])
    with pytest.raises(UserError, match="explicit"):
        args.func(args)


def test_cli_runs_until_sigterm_and_frees_ports(repo, tmp_path):
    ports = free_ports(3)
    cmd = [sys.executable, "-m", "anytime.cli", "triton", "--repository", str(repo[0]),
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
           "--log-file", str(tmp_path / "triton.log")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "anytime triton did not become ready"
            time.sleep(0.2)
        assert all(client.is_model_ready(m) for m in MODELS)  # default model-control-mode none loads all
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopping tritonserver" in out
    assert all(port_is_free(p) for p in ports)
    assert (tmp_path / "triton.log").stat().st_size > 0


def test_supervisor_restarts_a_killed_server(server, reference):
    """Runs last: SIGKILL the shared server; the supervisor brings it back with the models loaded."""
    old_pid = server.pid
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.restarts < 1:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    server.wait_ready(60)
    assert server.pid != old_pid and server.is_alive()
    x = images(3, seed=5)
    check(grpc_infer(server, MODELS[1], x), reference[MODELS[1]], x)
    # The killed server's python stubs went with it. Orphans are reaped by PID 1, lazily in some sandboxes, so a
    # zombie (state Z) counts as gone; give the kill a moment to land.
    deadline = time.monotonic() + 10
    while _live_members(old_pid):
        assert time.monotonic() < deadline, f"processes of the killed server still run: {_live_members(old_pid)}"
        time.sleep(0.1)


def _restarted_within(server, before: int, seconds: float) -> float:
    t0 = time.monotonic()
    while server.restarts <= before:
        assert time.monotonic() - t0 < seconds, server.log_tail()
        time.sleep(0.05)
    server.wait_ready(60)
    return time.monotonic() - t0


def test_supervisor_restarts_a_server_that_hangs(server, reference):
    """A process that is alive but answers nothing (stopped here; Triton 2.51's fatal-signal handler hangs like
    this after a crash in its gRPC frontend) is killed after a few failed liveness checks and restarted."""
    before, old_pid = server.restarts, server.pid
    server.wait_ready(60)
    time.sleep(1.5)  # the watch has seen it answer
    os.kill(old_pid, signal.SIGSTOP)
    _restarted_within(server, before, 30)
    assert server.pid != old_pid
    x = images(2, seed=6)
    check(grpc_infer(server, MODELS[1], x), reference[MODELS[1]], x)


def test_supervisor_restarts_a_server_that_logs_a_fatal_signal(server, reference):
    """The line Triton writes when a fatal signal hits it kills it at once, without waiting for liveness checks."""
    before, old_pid = server.restarts, server.pid
    server.wait_ready(60)
    time.sleep(1.5)
    with open(server.log_file, "ab") as f:  # what Triton's handler writes (the server itself is fine here)
        f.write(b"free(): corrupted unsorted chunks\nSignal (6) received.\n")
    assert _restarted_within(server, before, 30) < 15
    assert server.pid != old_pid


def _live_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def test_a_missing_pytriton_is_a_clear_error_and_nothing_is_installed(monkeypatch):
    import importlib.util

    import anytime.serving.triton as triton_mod

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: pytest.fail(f"ran {a}: installing at run time"))
    with pytest.raises(TritonServerError, match="nvidia-pytriton==0.7.0 wheel, which is not installed"):
        triton_mod.ensure_installed()


def test_logs_go_where_the_caller_says_and_by_default_to_runs_not_the_temp_directory(tmp_path):
    """Every ``anytime serve`` and every stack left logs in the system's temp directory, which nobody cleans: by
    default they go to the current directory's runs/logs (the checkout, wherever it lives)."""
    from anytime.serving.stack import ServingStack
    from anytime.serving.triton import DEFAULT_LOG_DIR

    default = TritonServer(tmp_path / "repo", http_port=1, grpc_port=2, metrics_port=3)
    assert default.log_file.parent == DEFAULT_LOG_DIR == Path("runs/logs")
    stack = ServingStack(tmp_path / "repo", log_dir=tmp_path / "logs")
    assert stack.gateway_log.parent == tmp_path / "logs"
    assert ServingStack(tmp_path / "repo").gateway_log.parent == DEFAULT_LOG_DIR
