"""``anytime search`` (the architecture search) and ``anytime draw`` (architectures as in the paper's Figure 7)."""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "search", help="search pyramid architectures: an LSTM controller trained with PPO, trials on Ray",
        description="Search NAS-FPN pyramid networks (paper §3.1, §4.2): the controller proposes architectures, "
                    "Ray workers train each on a proxy task, the AP on held-out training images is the reward. "
                    "Writes DIR/trials.jsonl, DIR/best.json (usable as a model config's pyramid), "
                    "DIR/reward_curve.png and DIR/unique_archs.png; --resume continues a killed search exactly.")
    p.add_argument("--out", required=True, metavar="DIR", help="search directory")
    p.add_argument("--config", metavar="FILE", help="search config JSON (see anytime.search.config)")
    p.add_argument("--trials", type=int, help="architectures to sample and evaluate (default 64)")
    p.add_argument("--workers", type=int, help="trials running at once (default 2)")
    p.add_argument("--controller", choices=("ppo", "random"), help="PPO-trained LSTM (default) or random search")
    p.add_argument("--proxy", metavar="PRESET", help="proxy task preset: cpu (default), tiny, paper")
    p.add_argument("--seed", type=int, help="seed of the controller (default 0)")
    p.add_argument("--address", metavar="ADDR", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--resume", action="store_true", help="continue the search in DIR from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_search_command)

    d = sub.add_parser("draw", help="draw pyramid architectures as in the paper's Figure 7",
                       description="Levels as rows, merging cells as nodes (+ sum, GP global pooling), outputs "
                                   "filled; one panel per architecture.")
    d.add_argument("archs", nargs="+", metavar="ARCH", help="architecture JSON files or built-in names (e.g. nasfpn)")
    d.add_argument("--out", required=True, metavar="PNG")
    d.set_defaults(func=run_draw_command)


def resolve_config(args: argparse.Namespace):
    """The search's configuration: the saved one when resuming, else --config; flags on top of either."""
    from anytime.cli import UserError
    from anytime.search.config import SearchConfig, load_search_config, resume_differences

    flags = {k: getattr(args, k) for k in ("trials", "workers", "controller", "seed", "address")
             if getattr(args, k) is not None}
    if args.resume:
        from anytime.search.state import load_state

        saved = SearchConfig.from_dict(load_state(args.out)["config"])
        asked = load_search_config(args.config) if args.config else SearchConfig.from_dict(saved.to_dict())
        cfg = _apply(asked, flags, args.proxy)
        changed = resume_differences(saved, cfg)
        if changed:
            raise UserError(f"--resume: {', '.join(changed)} differ from the search in {args.out}; "
                            "only trials, workers, address and resources may change")
        return cfg
    return _apply(load_search_config(args.config), flags, args.proxy)


def _apply(cfg, flags: dict, proxy: str | None):
    for k, v in flags.items():
        setattr(cfg, k, v)
    if proxy is not None:
        cfg.proxy = {**cfg.proxy, "preset": proxy}
    return cfg.validate()


def run_search_command(args: argparse.Namespace) -> int:
    from anytime.search.driver import run_search, summary_line

    summary = run_search(resolve_config(args), args.out, resume=args.resume, progress=not args.no_progress)
    print(summary_line(summary))
    return 0


def run_draw_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from anytime.model.spec import PyramidSpec
    from anytime.search.plots import draw_architectures

    specs = [PyramidSpec.load(a) for a in args.archs]
    titles = [f"{s.name} ({a})" if Path(a).suffix else s.name for s, a in zip(specs, args.archs)]
    path = draw_architectures(specs, args.out, titles)
    print(f"drew {len(specs)} architecture{'s' if len(specs) > 1 else ''} to {path}")
    return 0
