"""``anytime detect`` (one image) and ``anytime loadgen`` (a dataset, open loop): the gateway's clients."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clients.detect import DEFAULT_SERVER


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect objects in one image through the gateway",
                              description="Send one image (JPEG/PNG as is, other formats re-encoded to PNG) to the "
                                          "gateway with a latency budget and print what came back.")
    p.add_argument("image", type=Path, help="image file (any format Pillow reads)")
    _connection_args(p)
    p.add_argument("--budget-ms", type=float, default=0.0,
                   help="latency budget in ms (default: none, so the gateway's default budget)")
    p.add_argument("--deadline-ms", type=float, default=None, help="gRPC deadline in ms (default: none)")
    p.add_argument("--min-exit", type=int, default=0, help="shallowest exit allowed (default: the first)")
    p.add_argument("--max-exit", type=int, default=0, help="deepest exit allowed (default: the last)")
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="drop detections scoring below this (default: the model's own threshold)")
    p.add_argument("--json", action="store_true", help="print only the response as JSON")
    p.add_argument("--draw", type=Path, metavar="OUT.png", help="write the image with the detections drawn")
    p.set_defaults(func=run_detect)

    p = subparsers.add_parser("loadgen", help="stream a COCO dataset through the gateway open loop and score it",
                              description="For each budget setting and rate, send distinct images at Poisson "
                                          "arrivals without waiting for answers; report statuses, budget-met rate, "
                                          "latency, exits used and COCO AP (failed requests count as no detections).")
    _connection_args(p)
    p.add_argument("--data", type=Path, help="COCO-format dataset root (default: data/synth, generated if absent)")
    p.add_argument("--split", default="val", help="dataset split (default: %(default)s)")
    budgets = p.add_mutually_exclusive_group()
    budgets.add_argument("--budgets-ms", help="comma-separated fixed budgets, one setting each (default: 10,20,40)")
    budgets.add_argument("--budget-dist", metavar="uniform:LO:HI|lognormal:MEAN_MS:SIGMA",
                         help="draw each request's budget from this distribution instead")
    p.add_argument("--rates", default="20", help="comma-separated arrival rates in requests/s, each > 0 (default: 20)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per setting, distinct images (default: min(200, images in the split))")
    p.add_argument("--out", type=Path, default=Path("runs/loadgen"), help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of image order, arrivals and budget draws")
    p.add_argument("--json", action="store_true", help="print only the report as JSON")
    p.set_defaults(func=run_loadgen)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT", help="gateway address (default: %(default)s)")
    p.add_argument("--token", default=None, help="bearer token, for a gateway started with --token")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                   help="PEM CA certificate: connect with TLS, verified against it")


def _check_tls_ca(args) -> None:
    from anytime.cli import UserError

    if args.tls_ca is not None and not args.tls_ca.is_file():
        raise UserError(f"--tls-ca {args.tls_ca}: no such file")


def run_detect(args: argparse.Namespace) -> int:
    import grpc

    from anytime.cli import UserError
    from clients.detect import detect, draw_detections, format_response, image_bytes, response_dict

    _check_tls_ca(args)
    if args.deadline_ms is not None and args.deadline_ms <= 0:
        raise UserError(f"--deadline-ms must be > 0, got {args.deadline_ms:g}")
    try:
        data = image_bytes(args.image)
    except OSError as e:
        raise UserError(f"cannot read image {args.image}: {e.strerror or e}") from None
    try:
        response = detect(args.server, data, args.budget_ms, min_exit=args.min_exit, max_exit=args.max_exit,
                          score_threshold=args.score_threshold, deadline_ms=args.deadline_ms, token=args.token,
                          tls_ca=args.tls_ca, request_id=args.image.name)
    except grpc.RpcError as e:
        print(f"anytime detect: error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if args.draw:
        try:
            draw_detections(args.image, response, args.draw)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot draw onto {args.image} or write {args.draw}: {e}") from None
    if args.json:
        print(json.dumps(response_dict(response)))
    else:
        print(format_response(response, args.image.name))
        if args.draw:
            print(f"drawn: {args.draw}")
    return 0


def _numbers(text: str, what: str) -> list[float]:
    from anytime.cli import UserError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{what} is empty")
    return values


def run_loadgen(args: argparse.Namespace) -> int:
    import contextlib

    from anytime.cli import UserError
    from clients.loadgen import loadgen
    from clients.report import format_table

    _check_tls_ca(args)
    budgets = _numbers(args.budgets_ms, "--budgets-ms") if args.budgets_ms else None
    rates = _numbers(args.rates, "--rates")
    if any(not r > 0 for r in rates):
        raise UserError(f"--rates must all be > 0 requests/s (the load is open loop), got {args.rates}")
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such directory")
    try:
        # pycocotools and the data generator print progress: keep stdout for the answer.
        with contextlib.redirect_stdout(sys.stderr):
            report = loadgen(args.server, args.data, budgets_ms=budgets, budget_dist=args.budget_dist, rates=rates,
                             requests=args.requests, out=args.out, split=args.split, seed=args.seed, token=args.token,
                             tls_ca=args.tls_ca)
    except (ValueError, ConnectionError) as e:  # bad settings, an unreadable dataset, an unreachable gateway
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps({"settings": report["settings"], **{k: v for k, v in report.items() if k != "settings"}}))
    else:
        print(format_table(report))
        print(f"\nwrote {report['out']} and {', '.join(report['plots'])}")
    return 0
