"""``anytime serve``: the gateway in the foreground, on given Triton servers or on one it starts itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="run the deadline-aware gRPC gateway over Triton",
                       description="Serve Detect requests: each gets the deepest exit that fits the smaller of its gRPC "
                                   "deadline and its budget_ms. With no --triton, starts its own Triton on the repository "
                                   "(exporting the embedded default model first if the repository is empty).")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--triton", default=None, help="Triton gRPC endpoints, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--repository", type=Path, default=None, help="exported repository (default: model_repository/)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--default-budget-ms", type=float, default=200.0, help="budget of requests that bring none")
    p.add_argument("--when-infeasible", choices=["reject", "first_exit"], default="reject",
                   help="a budget below the first exit's latency: reject (DEADLINE_EXCEEDED) or run exit 1 anyway")
    p.add_argument("--slots", type=int, default=1, help="requests in flight per Triton endpoint (default: %(default)s)")
    p.add_argument("--quantile", type=float, default=0.95, help="latency quantile the scheduler plans with")
    p.add_argument("--token", default=None, help="require 'authorization: Bearer TOKEN' on Detector calls")
    p.add_argument("--tls-cert", type=Path, default=None)
    p.add_argument("--tls-key", type=Path, default=None)
    p.add_argument("--max-message-mb", type=float, default=32.0)
    p.set_defaults(func=run)


def run(args) -> int:
    from anytime.cli import UserError
    from anytime.config import DEFAULT_REPOSITORY
    from anytime.serve.scheduler import SchedulerConfig
    from server.gateway import GatewayConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    repository = args.repository or DEFAULT_REPOSITORY
    with contextlib.ExitStack() as stack:
        if args.triton:
            endpoints = [e.strip() for e in args.triton.split(",") if e.strip()]
            if not (repository / "manifest.json").exists():
                raise UserError(f"{repository}/manifest.json not found: pass --repository, the directory the "
                                "Triton servers serve (it tells the gateway the exits and classes)")
        else:
            from server.triton import TritonServer, free_ports

            from anytime.config import DEFAULT_CHECKPOINT
            from anytime.export.exporter import ensure_exported

            ensure_exported(repository, DEFAULT_CHECKPOINT)  # an empty repository gets the embedded default model
            http, grpc_port, metrics = free_ports(3)
            triton = stack.enter_context(TritonServer(repository, http_port=http, grpc_port=grpc_port,
                                                      metrics_port=metrics, restart=True))
            endpoints = [triton.grpc_url]
            print(f"started Triton on {triton.grpc_url} (log: {triton.log_file})", flush=True)
        config = GatewayConfig(
            repository=repository, endpoints=endpoints, host=args.host, port=args.port, metrics_port=args.metrics_port,
            default_budget_ms=args.default_budget_ms, token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key,
            max_message_bytes=int(args.max_message_mb * 1024 * 1024),
            scheduler=SchedulerConfig(quantile=args.quantile, when_infeasible=args.when_infeasible,
                                      slots_per_endpoint=args.slots))
        asyncio.run(_serve(config))
    return 0


async def _serve(config) -> None:
    from server.gateway import Gateway

    gateway = await Gateway(config).start()
    print(f"anytime gateway serving on {config.host}:{gateway.port} (exits {gateway.exits}); Ctrl-C or SIGTERM stops it",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("draining in-flight requests...", flush=True)
    await gateway.stop(grace=5.0)
