"""``anytime triton``: run Triton Inference Server on a model repository in the foreground, supervised."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "triton",
        help="run Triton Inference Server on an exported model repository",
        description="Run the tritonserver bundled with nvidia-pytriton on a model repository until SIGTERM/SIGINT, "
        "restarting it if it dies.",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    p.add_argument("--model-control-mode", choices=("none", "explicit"), default="none")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME", help="explicit mode: load at startup (repeatable; '*' = all)")
    p.add_argument("--log-file", type=Path, default=None, help="server log (default: a file in the temp dir)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness (default: %(default)s)")
    p.add_argument("--max-restarts", type=int, default=None, help="give up after this many restarts (default: never)")
    p.set_defaults(func=run_triton)


def check_repository(path: Path) -> list[str]:
    """The model names in ``path``; a missing or empty repository is the user's mistake."""
    from anytime.cli import UserError

    if not path.is_dir():
        raise UserError(f"model repository {path} does not exist (run `anytime export` first, or pass --repository)")
    models = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file())
    if not models:
        raise UserError(f"model repository {path} holds no model (no <name>/config.pbtxt); run `anytime export` first")
    return models


def run_triton(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from anytime.cli import UserError
    from server.triton import TritonServer, TritonServerError, port_is_free

    models = check_repository(args.repository)
    if args.load_model and args.model_control_mode != "explicit":
        raise UserError("--load-model needs --model-control-mode explicit")
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port, "--metrics-port": args.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise UserError(f"ports must differ, got {ports}")
    bind_host = "0.0.0.0" if args.host in ("0.0.0.0", "") else args.host
    for flag, port in ports.items():
        if not port_is_free(port, bind_host):
            raise UserError(f"{flag} {port} is already in use on {args.host}")

    server = TritonServer(
        args.repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        log_file=args.log_file,
        restart=True,
        max_restarts=args.max_restarts,
    )
    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"tritonserver pid {server.pid} serving {len(models)} models from {args.repository}; log {server.log_file}", flush=True)
        try:
            waited = server.wait_ready(args.ready_timeout)
        except TritonServerError as e:
            if stop.is_set():
                return 0
            print(f"anytime triton: error: {e}", file=sys.stderr)
            return 1
        print(f"ready after {waited:.1f}s: http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}", flush=True)
        restarts = 0
        while not stop.wait(1.0):
            if server.restarts != restarts:
                restarts = server.restarts
                print(f"tritonserver restarted ({restarts} so far), now pid {server.pid}", flush=True)
            if server.gave_up:
                print(f"anytime triton: error: tritonserver keeps dying; gave up. Last log lines:\n{server.log_tail()}", file=sys.stderr)
                return 1
        print(f"signal {signal.Signals(received[0]).name}: stopping tritonserver", flush=True)
        return 0
    finally:
        rc = server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(f"tritonserver stopped (status {rc})", flush=True)
