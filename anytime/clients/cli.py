"""``anytime detect`` (one image) and ``anytime loadgen`` (a dataset, open loop): the gateway's clients."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anytime.clients.detect import add_arguments, add_connection_arguments, add_letterbox_argument


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect objects in one image through the gateway",
                              description="Send one image (JPEG/PNG as is, other formats re-encoded to PNG) to the "
                                          "gateway with a latency budget and print what came back.")
    add_arguments(p)
    p.set_defaults(func=run_detect)

    p = subparsers.add_parser("loadgen", help="stream a COCO dataset through the gateway open loop and score it",
                              description="For each budget setting and rate, send distinct images at Poisson "
                                          "arrivals without waiting for answers; report statuses, budget-met rate, "
                                          "latency, exits used and COCO AP (failed requests count as no detections).")
    add_connection_arguments(p)
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
    add_letterbox_argument(p)
    p.set_defaults(func=run_loadgen)


def run_detect(args: argparse.Namespace) -> int:
    from anytime.cli import UserError
    from anytime.clients.detect import ClientError, run

    try:
        return run(args, prog="anytime detect")
    except ClientError as e:
        raise UserError(str(e)) from None


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
    from anytime.clients.detect import ClientError, check_tls_ca
    from anytime.clients.loadgen import loadgen
    from anytime.clients.report import format_table

    try:
        check_tls_ca(args.tls_ca)
    except ClientError as e:
        raise UserError(str(e)) from None
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
                             tls_ca=args.tls_ca, letterbox=args.letterbox)
    except (ValueError, ConnectionError) as e:  # bad settings, an unreadable dataset, an unreachable gateway
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps({"settings": report["settings"], **{k: v for k, v in report.items() if k != "settings"}}))
    else:
        print(format_table(report))
        print(f"\nwrote {report['out']} and {', '.join(report['plots'])}")
    return 0
