"""Helpers shared by the test-suite and benchmarks: tiny configurations, detection comparison, metrics."""

from __future__ import annotations

import contextlib

import numpy as np

from anytime.config import ModelConfig


def scrape(url: str, name: str, **labels: str) -> float:
    """The value of metric ``name`` on a Prometheus endpoint, summed over the series with at least these labels.

    ``name`` is the metric family's: a counter's value is its ``_total`` sample (the parser names it so even where
    the server, as Triton's custom metrics do, leaves the suffix out), a gauge's its only sample.
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) if family.name == name
               for s in family.samples if s.name in (name, name + "_total") and labels.items() <= s.labels.items())


def scrape_settled(url: str, name: str, quiet_s: float = 0.3, timeout: float = 10.0, **labels: str) -> float:
    """``scrape`` until the value has stayed the same for ``quiet_s`` seconds (or ``timeout`` passes): a baseline
    that no write still pending from earlier events can move. The progressive model writes its metrics at most every
    ``metrics_interval_ms`` (100 by default), so ``quiet_s`` must be longer than that."""
    import time

    end = time.monotonic() + timeout
    value, since = scrape(url, name, **labels), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < end:
        time.sleep(0.02)
        now = scrape(url, name, **labels)
        if now != value:
            value, since = now, time.monotonic()
    return value


def scrape_until(url: str, name: str, done, timeout: float = 10.0, **labels: str) -> float:
    """``scrape`` until ``done(value)`` holds or ``timeout`` seconds pass; the last value either way.

    For metrics written after the event that a test waits for: the progressive model writes its custom metrics from
    a thread of its own (``anytime.serving.backend_metrics``), a moment after the response that a client sees."""
    import time

    end = time.monotonic() + timeout
    while True:
        value = scrape(url, name, **labels)
        if done(value) or time.monotonic() > end:
            return value
        time.sleep(0.02)


def tiny_config(**changes) -> ModelConfig:
    """A model small enough to train and export in a second on one CPU core."""
    base = dict(backbone="resnet10", backbone_width=0.25, pyramid="nasfpn", repeats=2, width=16,
                image_size=128, num_classes=3, head_convs=2)
    base.update(changes)
    return ModelConfig(**base)


def assert_same_detections(a: dict, b: dict, tol: float = 1e-3) -> None:
    """Two padded detection sets (boxes, scores, labels, count as numpy) are the same, up to ``tol``.

    Detections are matched one-to-one (same label, boxes and scores within tol), so two runtimes that order
    near-tied scores differently still compare equal; a missing or extra detection fails. When an image's
    detections fill the fixed maximum, the two runtimes may keep different members of a near-tied group at the
    cut: a detection whose score is within ``tol`` of the lowest kept score may go unmatched.
    """
    a = {k: np.asarray(v) for k, v in a.items()}
    b = {k: np.asarray(v) for k, v in b.items()}
    assert a["count"].tolist() == b["count"].tolist(), f"detection counts differ: {a['count']} vs {b['count']}"
    full = a["boxes"].shape[1]
    for i, n in enumerate(a["count"].tolist()):
        free = np.ones(n, dtype=bool)
        cut = min(a["scores"][i, :n].min(), b["scores"][i, :n].min()) if n else 0.0
        for j in range(n):
            ok = (free & (b["labels"][i, :n] == a["labels"][i, j])
                  & (np.abs(b["scores"][i, :n] - a["scores"][i, j]) <= tol)
                  & (np.abs(b["boxes"][i, :n] - a["boxes"][i, j]).max(-1) <= tol))
            if not ok.any() and n == full and a["scores"][i, j] <= cut + tol:
                continue  # a near-tie at the cut of a full list
            assert ok.any(), (f"image {i}: detection {j} (label {a['labels'][i, j]}, score {a['scores'][i, j]:.5f}, "
                              f"box {a['boxes'][i, j]}) has no match")
            free[np.argmax(ok)] = False


def assert_valid_detections(model, images, exit: int, detections: dict, tol=None) -> None:
    """``detections`` (from any runtime, e.g. ONNX Runtime or Triton) are a valid NMS of what the PyTorch
    ``model`` scores at this exit on ``images``: the CPU-independent comparison of ``anytime.export.verify``."""
    import torch

    from anytime.export.verify import NmsSettings, Tolerance, check_nms

    with torch.no_grad():
        out = model(torch.as_tensor(images), exit=exit, with_candidates=True)
    check_nms(detections, out[4].numpy(), out[5].numpy(), NmsSettings.of(model.cfg), tol or Tolerance())


def random_detector(cfg: ModelConfig, seed: int = 0, logit_std: float = 1.0):
    """An untrained model whose every exit gives varied, confident-enough scores (for export/serving tests).

    Random weights alone make deep exits collapse to constant features (BN running stats are 0/1), so every
    score ties at 0.5; a few train-mode passes on random images calibrate the BN statistics first.
    """
    import torch

    from anytime.model import AnytimeRetinaNet

    torch.manual_seed(seed)
    model = AnytimeRetinaNet(cfg)
    head = model.heads[0]
    torch.nn.init.normal_(head.cls_logits.weight, std=logit_std)
    torch.nn.init.zeros_(head.cls_logits.bias)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration passes
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            images = torch.randint(0, 256, (4, 3, cfg.image_size, cfg.image_size), generator=g, dtype=torch.uint8)
            model.exit_outputs(images, list(range(1, model.num_exits + 1)))
    return model.eval()



@contextlib.contextmanager
def in_process_gateway(repo, **config):
    """A real Triton process on ``repo`` and the gateway running in this process, on an event loop of its own in a
    thread, so a test can reach inside it (inject a fault, read its metrics or queue). ``config``: more
    ``GatewayConfig`` fields."""
    import asyncio
    import threading

    from anytime.serving.gateway import Gateway, GatewayConfig
    from anytime.serving.triton import TritonServer, free_ports

    http, grpc_port, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as triton:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        settings = {"calibration_runs": 5, **config}
        gateway_config = GatewayConfig(repository=repo, endpoints=[triton.grpc_url], port=0, **settings)
        gateway = asyncio.run_coroutine_threadsafe(Gateway(gateway_config).start(), loop).result(120)
        try:
            yield gateway
        finally:
            asyncio.run_coroutine_threadsafe(gateway.stop(grace=0.5), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
