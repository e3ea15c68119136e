"""Does the proxy task's reward carry signal? Noise (one architecture, several seeds) against spread
(NAS-FPN, the FPN baseline and random architectures of the search space), on a proxy preset.

Each row is one trial of ``anytime search`` (same code: ``anytime.search.ray_runner.trial_task`` on Ray
workers, one torch thread each). The seed is the proxy training seed (initialisation of everything but the
backbone, data order, augmentation); the reward set and the architecture stay fixed.

    .venv/bin/python benchmarks/proxy_signal.py                      # cpu preset, 2 workers, ~15 min on 2 cores
    .venv/bin/python benchmarks/proxy_signal.py --proxy tiny --random 2

Prints a table and writes runs/proxy_signal/<preset>/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", default="cpu", help="proxy preset (default: cpu)")
    ap.add_argument("--random", type=int, default=5, help="random architectures (default: 5)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for NAS-FPN's noise (default: 3)")
    ap.add_argument("--arch-seed", type=int, default=123, help="seed that draws the random architectures")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="output directory (default: runs/proxy_signal/<preset>)")
    args = ap.parse_args(argv)

    import numpy as np

    from anytime.search.proxy import load_proxy, prepare
    from anytime.search.ray_runner import RayRunner
    from anytime.search.space import SearchSpace

    out = Path(args.out or f"runs/proxy_signal/{args.proxy}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = str(Path("data/search-proxy").resolve())
    base = load_proxy(args.proxy)
    prepare(base, cache)
    space = SearchSpace()
    rng = np.random.default_rng(args.arch_seed)
    randoms = [space.decode(space.sample_uniform(rng), name=f"random{i}").to_dict() for i in range(args.random)]
    # (label, pyramid, seed): NAS-FPN on every seed, one random architecture on a second seed, the rest once.
    runs = [("nasfpn", "nasfpn", s) for s in range(args.seeds)] + [("fpn", "fpn", 0)]
    runs += [(f"random{i}", arch, 0) for i, arch in enumerate(randoms)]
    if randoms:
        runs.append(("random0", randoms[0], 1))

    t0 = time.perf_counter()
    rows = []
    with RayRunner(workers=args.workers) as runner:
        todo = list(enumerate(runs))
        while todo or runner.in_flight:
            while todo and runner.in_flight < args.workers:
                i, (label, pyramid, seed) = todo.pop(0)
                proxy = load_proxy(args.proxy, {"train": {"seed": seed}})
                runner.submit(i, pyramid, proxy.to_dict(), cache, str(out / "trials" / f"{i:02d}-{label}-seed{seed}"))
            i, result = runner.wait()
            label, pyramid, seed = runs[i]
            rows.append({"label": label, "seed": seed, "status": result["status"], "reward": result.get("reward"),
                         "metrics": result.get("metrics", {}), "seconds": result.get("seconds"),
                         "architecture": pyramid, "error": result.get("error")})
            print(f"  {label:10s} seed {seed}: {result.get('reward')} ({result.get('seconds')} s)", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: (r["label"], r["seed"]))
    summary = summarize(rows)
    (out / "results.json").write_text(json.dumps({"proxy": base.to_dict(), "rows": rows, "summary": summary,
                                                  "wall_seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    print(table(rows, summary, base.name, time.perf_counter() - t0))
    return 0


def summarize(rows: list[dict]) -> dict:
    """Noise: the largest difference between seeds of one architecture. Spread: over architectures (seed 0)."""
    by_label: dict[str, list[float]] = {}
    for r in rows:
        if r["reward"] is not None:
            by_label.setdefault(r["label"], []).append(r["reward"])
    noise = {k: max(v) - min(v) for k, v in by_label.items() if len(v) > 1}
    first = [r["reward"] for r in rows if r["seed"] == 0 and r["reward"] is not None]
    return {"noise_by_arch": noise, "noise_max": max(noise.values(), default=None),
            "spread": (max(first) - min(first)) if first else None,
            "std_across_archs": statistics.pstdev(first) if len(first) > 1 else None}


def table(rows: list[dict], summary: dict, preset: str, seconds: float) -> str:
    exits = sorted({k for r in rows for k in r["metrics"]})
    head = f"| architecture | seed | reward | {' | '.join(exits)} | seconds |"
    lines = [f"Proxy signal on preset {preset!r} (reward = AP of the last exit on the reward set):", "", head,
             "|" + "---|" * (4 + len(exits))]
    for r in rows:
        reward = f"{r['reward']:.4f}" if r["reward"] is not None else f"failed ({r['error']})"
        ms = " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in exits)
        lines.append(f"| {r['label']} | {r['seed']} | {reward} | {ms} | {r['seconds']} |")
    lines.append("")
    noise = ", ".join(f"{k} {v:.4f}" for k, v in summary["noise_by_arch"].items())
    lines.append(f"noise (max - min over seeds): {noise}")
    if summary["spread"] is not None:
        lines.append(f"spread over architectures (seed 0): max - min {summary['spread']:.4f}, "
                     f"std {summary['std_across_archs']:.4f}")
    lines.append(f"wall time {seconds / 60:.1f} min")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
