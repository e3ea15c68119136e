"""Start and stop a whole serving stack: Triton server(s) and the gateway, as real processes on loopback.

The demo and the end-to-end tests use it; so can anyone who wants the system up from Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from anytime.serving.triton import DEFAULT_LOG_DIR, TritonServer, free_ports


class ServingStack:
    """``with ServingStack(repo, tritons=1) as s: s.address`` -> a ready gateway on 127.0.0.1."""

    def __init__(self, repository: str | Path, tritons: int = 1, gateway_args: tuple[str, ...] = (),
                 ready_timeout: float = 120.0, restart_triton: bool = False, log_dir: str | Path = DEFAULT_LOG_DIR):
        """``restart_triton``: supervise each Triton server and restart it when it dies (as ``anytime serve`` and
        ``anytime triton`` do); off by default so that tests see a killed server stay dead. ``restarts`` counts them.
        ``log_dir``: where the gateway's and each Triton's log go (default: the current directory's runs/logs)."""
        self.repository = Path(repository)
        self.restart_triton = restart_triton
        self.triton_count = tritons
        self.gateway_args = tuple(gateway_args)
        self.ready_timeout = ready_timeout
        self.tritons: list[TritonServer] = []
        self.gateway: subprocess.Popen | None = None
        self.port = self.metrics_port = None
        self.log_dir = Path(log_dir)
        self.gateway_log = self.log_dir / f"gateway-{os.getpid()}-{time.time_ns()}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def restarts(self) -> int:
        """Triton restarts so far (``restart_triton``): each is an outage that requests met."""
        return sum(t.restarts for t in self.tritons)

    @property
    def metrics_url(self) -> str:
        """The gateway's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "ServingStack":
        try:
            for _ in range(self.triton_count):
                http, grpc_port, metrics = free_ports(3)
                t = TritonServer(self.repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics,
                                 restart=self.restart_triton, log_file=self.log_dir / f"tritonserver-{http}.log")
                t.start()
                self.tritons.append(t)
            for t in self.tritons:
                t.wait_ready(self.ready_timeout)
            self.start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def start_gateway(self) -> None:
        self.port, self.metrics_port = free_ports(2)
        endpoints = ",".join(t.grpc_url for t in self.tritons)
        cmd = [sys.executable, "-m", "anytime.cli", "serve", "--port", str(self.port), "--triton", endpoints,
               "--repository", str(self.repository), "--metrics-port", str(self.metrics_port), *self.gateway_args]
        self.gateway_log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.gateway_log, "wb")
        self.gateway = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_gateway_ready()

    def wait_gateway_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.gateway.returncode}:\n{self.gateway_log_tail()}")
            try:
                with grpc.insecure_channel(self.address) as ch:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the gateway was not ready within {self.ready_timeout:.0f} s:\n{self.gateway_log_tail()}")

    def gateway_log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.gateway_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_gateway(self, timeout: float = 15.0) -> int | None:
        if self.gateway is None:
            return None
        if self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(timeout)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()
        self._log.close()
        code, self.gateway = self.gateway.returncode, None
        return code

    def stop(self) -> None:
        self.stop_gateway()
        for t in self.tritons:
            t.stop()
        self.tritons = []

    def __enter__(self) -> "ServingStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
