"""``anytime serve`` (the gateway, on given Triton servers or on one it starts itself), ``anytime triton`` (a
supervised Triton Inference Server on a model repository, in the foreground) and ``anytime profile`` (latency of
every exit through Triton, ONNX Runtime and PyTorch, stored in the manifest as the gateway's prior)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path


def add_parsers(sub) -> None:
    _add_triton_parser(sub)
    _add_serve_parser(sub)
    _add_profile_parser(sub)


def _add_serve_parser(sub) -> None:
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
    # upfront stays the default while progressive does not measure better on the real clock (benchmarks/progressive.py
    # and README "Progressive against upfront": ahead below overload in one full run, behind at every load in two
    # others, within the 2-core machine's noise in short alternating runs)
    p.add_argument("--execution", choices=["progressive", "upfront"], default="upfront",
                   help="upfront (default): one exit per request, chosen before it starts, through the per-exit "
                        "models; progressive: every request runs stage by stage through the progressive model and "
                        "is answered at its deadline with the deepest exit reached")
    p.add_argument("--slots", type=int, default=None,
                   help="upfront: requests in flight per Triton endpoint (default: the exit models' instance count)")
    p.add_argument("--quantile", type=float, default=0.95, help="latency quantile the scheduler plans with")
    p.add_argument("--margin-ms", type=float, default=None,
                   help="upfront: time reserved per request outside Triton (answer, transport; default: the "
                        "scheduler's, 5 ms, measured)")
    p.add_argument("--planner", choices=["edf", "batch"], default="edf",
                   help="upfront: edf (default): one image per call, exits planned earliest deadline first with a "
                        "safety reserve; batch: admission by the cheapest exit given the queue, the exit chosen at "
                        "dispatch, ready requests for one exit batched into one call")
    p.add_argument("--plan-at", choices=["mean", "quantile"], default="mean",
                   help="upfront, batch planner: replay the queue at mean latencies (default) or at the planning "
                        "quantile (more conservative: fewer late answers, more refusals)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="upfront, batch planner: images per Triton call (default: the exit models' max_batch_size)")
    p.add_argument("--instances", type=int, default=None,
                   help="with no --triton: Triton instances of each exit model, i.e. calls run at once (default: as "
                        "exported, 2); --slots follows it unless given")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="with no --triton: ONNX Runtime threads per call (default: as exported; anytime export writes 1)")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="images decoded at once (default: one per core of this process)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="with no --triton: where the Triton it starts writes its log (default: runs/logs)")
    p.add_argument("--token", default=None, help="require 'authorization: Bearer TOKEN' on Detector calls")
    p.add_argument("--tls-cert", type=Path, default=None)
    p.add_argument("--tls-key", type=Path, default=None)
    p.add_argument("--max-message-mb", type=float, default=32.0)
    p.set_defaults(func=run)


def run(args) -> int:
    from anytime.cli import UserError
    from anytime.config import DEFAULT_REPOSITORY
    from anytime.serving.scheduler import SchedulerConfig
    from anytime.serving.gateway import GatewayConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.max_batch is not None and args.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {args.max_batch}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    repository = args.repository or DEFAULT_REPOSITORY
    with contextlib.ExitStack() as stack:
        if args.triton:
            if args.instances is not None or args.intra_op_threads is not None:
                raise UserError("--instances and --intra-op-threads configure the Triton that serve starts: with "
                                "--triton, export with them instead (anytime export --instances N --intra-op-threads N)")
            endpoints = [e.strip() for e in args.triton.split(",") if e.strip()]
            if not (repository / "manifest.json").exists():
                raise UserError(f"{repository}/manifest.json not found: pass --repository, the directory the "
                                "Triton servers serve (it tells the gateway the exits and classes)")
        else:
            from anytime.serving.triton import DEFAULT_LOG_DIR, TritonServer, free_ports

            from anytime.config import DEFAULT_CHECKPOINT
            from anytime.export.ensure import ExportFailed, ensure_exported

            # an empty repository gets the embedded default model, exported in a child process: the gateway that
            # this process goes on to run never imports torch
            try:
                ensure_exported(repository, DEFAULT_CHECKPOINT, stages=args.execution == "progressive")
            except ExportFailed as e:
                raise UserError(str(e)) from None
            if args.instances is not None or args.intra_op_threads is not None:
                from anytime.export.repository import configure_exits

                try:
                    changed = configure_exits(repository, args.instances, args.intra_op_threads)
                except ValueError as e:
                    raise UserError(str(e)) from None
                if changed:
                    print(f"configured {', '.join(changed)}: instances {args.instances or 'as exported'}, "
                          f"intra-op threads {args.intra_op_threads if args.intra_op_threads is not None else 'as exported'}",
                          flush=True)
            http, grpc_port, metrics = free_ports(3)
            log_dir = args.log_dir or DEFAULT_LOG_DIR
            triton = stack.enter_context(TritonServer(repository, http_port=http, grpc_port=grpc_port,
                                                      metrics_port=metrics, restart=True,
                                                      log_file=log_dir / f"tritonserver-{http}-{os.getpid()}.log"))
            endpoints = [triton.grpc_url]
            print(f"started Triton on {triton.grpc_url} (log: {triton.log_file})", flush=True)
        if args.slots is None:
            from anytime.export.repository import exit_instances

            args.slots = exit_instances(repository)
        config = GatewayConfig(
            repository=repository, endpoints=endpoints, host=args.host, port=args.port, metrics_port=args.metrics_port,
            default_budget_ms=args.default_budget_ms, token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key,
            execution=args.execution,
            **({} if args.decode_workers is None else {"decode_workers": args.decode_workers}),
            max_message_bytes=int(args.max_message_mb * 1024 * 1024),
            scheduler=SchedulerConfig(quantile=args.quantile, when_infeasible=args.when_infeasible,
                                      slots_per_endpoint=args.slots, planner=args.planner,
                                      max_batch=args.max_batch, plan_at=args.plan_at,
                                      **({} if args.margin_ms is None else {"margin_ms": args.margin_ms})))
        asyncio.run(_serve(config))
    return 0


async def _serve(config) -> None:
    from anytime.serving.gateway import Gateway

    gateway = await Gateway(config).start()
    print(f"anytime gateway serving on {config.host}:{gateway.port} (exits {gateway.exits}, options {', '.join(gateway.option_ids)}, {config.execution} "
          "execution); Ctrl-C or SIGTERM stops it", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("draining in-flight requests...", flush=True)
    await gateway.stop(grace=5.0)


def _add_triton_parser(subparsers) -> None:
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
    p.add_argument("--log-file", type=Path, default=None,
                   help="server log (default: runs/logs/tritonserver-HTTP_PORT-PID.log in the current directory)")
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
    from anytime.serving.triton import TritonServer, TritonServerError, port_is_free

    models = check_repository(args.repository)
    from anytime.export.repository import refresh_runners

    replaced = refresh_runners(args.repository)  # an export by an older version keeps its graphs, not its runners
    if replaced:
        print(f"updated the python runner of {', '.join(replaced)} to this version's", flush=True)
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


def _add_profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure each exit's latency through Triton, ONNX Runtime and PyTorch",
                       description="Time every exit at each batch size through a real Triton server (started on the "
                                   "repository unless --triton is given), ONNX Runtime and PyTorch; print a table, "
                                   "save a plot, and write the profile into the repository's manifest.")
    p.add_argument("--repository", type=Path, default=None, help="exported repository (default: model_repository/)")
    p.add_argument("--triton", default=None, help="an already running Triton's gRPC HOST:PORT")
    p.add_argument("--checkpoint", default=None, help="checkpoint for the PyTorch column (default: the manifest's)")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--backends", default="triton,onnxruntime,pytorch")
    p.add_argument("--out", type=Path, default=Path("runs/profile"), help="where the plot and JSON go")
    p.add_argument("--no-write", action="store_true", help="do not store the profile in the manifest")
    p.add_argument("--json", action="store_true", help="print the profile as JSON only")
    p.set_defaults(func=run_profile_cmd)


def run_profile_cmd(args) -> int:
    import json
    import sys

    from anytime.cli import UserError
    from anytime.config import DEFAULT_CHECKPOINT, DEFAULT_REPOSITORY
    from anytime.serving.measure import ProfileSettings, format_table, plot, run_profile
    from anytime.export.repository import read_manifest, write_manifest

    repository = args.repository or DEFAULT_REPOSITORY
    if not (repository / "manifest.json").exists():
        raise UserError(f"{repository} has no manifest.json: run `anytime export` first")
    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise UserError(f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}") from None
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = set(backends) - {"triton", "onnxruntime", "pytorch"}
    if unknown or not sizes or min(sizes) < 1 or args.runs < 1:
        raise UserError("choose backends from triton, onnxruntime, pytorch; batch sizes and --runs must be >= 1")
    manifest = read_manifest(repository)
    if max(sizes) > manifest.get("max_batch_size", 8):
        raise UserError(f"batch size {max(sizes)} is above the repository's max_batch_size")
    model = None
    if "pytorch" in backends:
        from anytime.train.checkpoint import load_model

        ckpt = args.checkpoint or manifest.get("checkpoint") or DEFAULT_CHECKPOINT
        if not Path(ckpt).exists():
            raise UserError(f"checkpoint {ckpt} for the PyTorch column not found (pass --checkpoint, or drop pytorch "
                            "from --backends)")
        model, _ = load_model(ckpt)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    profile = run_profile(repository, ProfileSettings(batch_sizes=sizes, runs=args.runs, backends=backends),
                          triton_url=args.triton, model=model, progress=log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(profile, indent=1))
    plot(profile, args.out / "latency.png")
    if not args.no_write:
        manifest = read_manifest(repository)
        manifest["latency_profile"] = profile
        write_manifest(repository, manifest)
    if args.json:
        print(json.dumps(profile))
    else:
        print(format_table(profile))
        print(f"\nplot: {args.out / 'latency.png'}; profile: {args.out / 'profile.json'}"
              + ("" if args.no_write else f"; stored in {repository / 'manifest.json'}"))
    return 0
