"""Compare finished searches (e.g. PPO against random search at the same trial count) and place their best
architectures against NAS-FPN and the FPN baseline on the same proxy (from benchmarks/proxy_signal.py).

    .venv/bin/python benchmarks/search_compare.py runs/search-ppo runs/search-random \\
        --signal runs/proxy_signal/cpu/results.json

Every trial of a search and the seed-0 rows of the signal table train with the same proxy seed, so their
rewards are directly comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("searches", nargs="+", help="search directories")
    ap.add_argument("--signal", help="results.json of benchmarks/proxy_signal.py on the same proxy")
    args = ap.parse_args(argv)

    from anytime.model.spec import PyramidSpec
    from anytime.search.space import canonical
    from anytime.search.state import read_records

    rows = []
    for d in args.searches:
        recs = read_records(d)
        if not recs:
            print(f"{d}: no trials", file=sys.stderr)
            continue
        cfg = json.loads((Path(d) / "search.json").read_text())
        rewards = [r["reward"] for r in recs]
        ok = [r for r in recs if r["status"] != "failed"]
        best = max(ok, key=lambda r: (r["reward"], -r["step"]))
        keys = {canonical(PyramidSpec.from_dict(r["architecture"])) for r in recs}
        marks = [m for m in (16, 32, 48, 64, 128) if m <= len(recs)]
        best_at = {m: max(r["reward"] for r in ok if r["step"] < m) for m in marks}
        q = max(1, len(recs) // 4)
        rows.append({
            "search": d, "controller": cfg["controller"], "trials": len(recs),
            "failed": sum(r["status"] == "failed" for r in recs), "reused": sum(r["status"] == "reused" for r in recs),
            "unique": len(keys), "best": best["reward"], "best_step": best["step"],
            "mean": statistics.mean(rewards), "first_quarter": statistics.mean(rewards[:q]),
            "last_quarter": statistics.mean(rewards[-q:]), "best_at": best_at,
            "hours": sum(r["seconds"] or 0 for r in recs) / 3600,
        })
    marks = sorted({m for r in rows for m in r["best_at"]})
    print("| search | controller | trials | unique | failed | best reward (step) | mean | first / last quarter mean | "
          + " | ".join(f"best by {m}" for m in marks) + " | trial wall-clock hours |")
    print("|" + "---|" * (9 + len(marks)))
    for r in rows:
        print(f"| {r['search']} | {r['controller']} | {r['trials']} | {r['unique']} | {r['failed']} | "
              f"{r['best']:.4f} ({r['best_step']}) | {r['mean']:.4f} | {r['first_quarter']:.4f} / {r['last_quarter']:.4f} | "
              + " | ".join(f"{r['best_at'].get(m, float('nan')):.4f}" for m in marks) + f" | {r['hours']:.2f} |")
    if args.signal:
        sig = json.loads(Path(args.signal).read_text())
        ref = {row["label"]: row["reward"] for row in sig["rows"] if row["seed"] == 0}
        noise = sig["summary"].get("noise_max")
        print()
        print("| architecture | proxy reward (seed 0) |")
        print("|---|---|")
        for r in rows:
            print(f"| best of {r['controller']} search | {r['best']:.4f} |")
        for label in ("nasfpn", "fpn"):
            if label in ref:
                print(f"| {label} | {ref[label]:.4f} |")
        if noise is not None:
            print(f"\nseed noise of the proxy (max - min over seeds of one architecture): {noise:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
