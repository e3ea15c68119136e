"""How do finished searches compare (PPO against random search at the same trial count)?

Compare finished searches (e.g. PPO against random search at the same trial count) and place their best
architectures against NAS-FPN and the FPN baseline on the same proxy (from benchmarks/proxy_signal.py).

    .venv/bin/python benchmarks/search_compare.py runs/search-ppo runs/search-random \\
        --signal runs/proxy_signal/cpu/results.json --plot runs/search_compare.png

    # a search on cpu256, against the references of benchmarks/proxy_fidelity.py on that proxy
    .venv/bin/python benchmarks/search_compare.py runs/search-cpu256 \\
        --fidelity docs/search-runs/fidelity-cpu256/results.json --plot runs/search_compare.png

Every trial of a search and the seed-0 rows of the signal table (or the trials of the fidelity set) train with the
same proxy seed, so their rewards are directly comparable. Searches are compared over the same number of trials:
the first N of each, N the smallest count (or ``--trials``). With two searches, a permutation test says how often
a random split of their pooled rewards gives a difference of means at least as large as the one seen: the
question is whether the controller's samples are better on average, not only its single best.
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
    ap.add_argument("--fidelity", help="results.json of benchmarks/proxy_fidelity.py on the same proxy (instead of "
                    "--signal): its architectures' rewards, by the searches' reward")
    ap.add_argument("--trials", type=int, help="compare the first N trials of each (default: the smallest count)")
    ap.add_argument("--plot", help="write the best-so-far curves of the searches here (PNG)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the permutation test")
    args = ap.parse_args(argv)

    from anytime.model.spec import PyramidSpec
    from anytime.search.space import canonical
    from anytime.search.state import read_records

    loaded = {d: sorted(read_records(d), key=lambda r: r["step"]) for d in args.searches}
    for d in [d for d, recs in loaded.items() if not recs]:
        print(f"{d}: no trials", file=sys.stderr)
        del loaded[d]
    if not loaded:
        return 1
    n = args.trials or min(len(recs) for recs in loaded.values())
    print(f"the first {n} trials of each search\n")
    rows = []
    for d, recs in loaded.items():
        recs = recs[:n]
        cfg = json.loads((Path(d) / "search.json").read_text())
        rewards = [r["reward"] for r in recs]
        ok = [r for r in recs if r["status"] != "failed"]
        best = max(ok, key=lambda r: (r["reward"], -r["step"]))
        keys = {canonical(PyramidSpec.from_dict(r["architecture"])) for r in recs}
        marks = [m for m in (16, 32, 48, 64, 128) if m <= len(recs)]
        best_at = {m: max(r["reward"] for r in ok if r["step"] < m) for m in marks}
        q = max(1, len(recs) // 4)
        rows.append({
            "search": d, "label": f"{cfg['controller']} ({d})", "records": recs, "controller": cfg["controller"], "trials": len(recs),
            "failed": sum(r["status"] == "failed" for r in recs), "reused": sum(r["status"] == "reused" for r in recs),
            "unique": len(keys), "best": best["reward"], "best_step": best["step"],
            "mean": statistics.mean(rewards), "first_quarter": statistics.mean(rewards[:q]),
            "last_quarter": statistics.mean(rewards[-q:]), "best_at": best_at,
            "hours": sum(r["seconds"] or 0 for r in recs) / 3600,
        })
    marks = sorted({m for r in rows for m in r["best_at"]})
    print("| search | controller | trials | unique | failed | best reward (step) | mean | first / last quarter mean | "
          + "".join(f"best by {m} | " for m in marks) + "trial wall-clock hours |")
    print("|" + "---|" * (9 + len(marks)))
    for r in rows:
        print(f"| {r['search']} | {r['controller']} | {r['trials']} | {r['unique']} | {r['failed']} | "
              f"{r['best']:.4f} ({r['best_step']}) | {r['mean']:.4f} | {r['first_quarter']:.4f} / {r['last_quarter']:.4f} | "
              + "".join(f"{r['best_at'].get(m, float('nan')):.4f} | " for m in marks) + f"{r['hours']:.2f} |")
    if len(rows) == 2:
        a, b = rows
        diff, p = permutation_test([r["reward"] for r in a["records"]], [r["reward"] for r in b["records"]],
                                   seed=args.seed)
        print(f"\nmean reward, {a['label']} minus {b['label']}: {diff:+.4f}; "
              f"permutation test (two-sided, 20000 splits): p = {p:.3f}")
    ref, noise = {}, None
    if args.signal:
        sig = json.loads(Path(args.signal).read_text())
        ref = {row["label"]: row["reward"] for row in sig["rows"] if row["seed"] == 0}
        noise = sig["summary"].get("noise_max")
    elif args.fidelity:
        fid = json.loads(Path(args.fidelity).read_text())
        exits = {json.loads((Path(r["search"]) / "search.json").read_text())["proxy"].get("reward_exit", "last")
                 for r in rows}
        if len(exits) != 1 or next(iter(exits)) not in ("last", "mean"):
            print(f"--fidelity needs searches rewarded by the last exit or by the mean, all alike; got {exits}",
                  file=sys.stderr)
            return 2
        key = f"reward_{exits.pop()}"
        ref = {row["label"]: row[key] for row in fid["rows"]}
        ref.setdefault("fpn", ref.get("fpn-cells"))  # FPN as merging cells is the stackable FPN of the set
        ref = {k: v for k, v in ref.items() if v is not None}
    if ref:
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
        for label in ("nasfpn", "fpn"):
            if label in ref:
                print(" ".join(f"{r['controller']}: {sum(t['reward'] > ref[label] for t in r['records'])}/"
                               f"{r['trials']} trials above {label};" for r in rows))
    if args.plot:
        from anytime.search.plots import plot_best_so_far

        refs = {name: ref[key] for name, key in (("NAS-FPN", "nasfpn"), ("FPN", "fpn")) if key in ref}
        searches = {r["label"]: r["records"] for r in rows}
        print(f"\nplot: {plot_best_so_far(searches, args.plot, refs, title=f'best reward in the first {n} trials')}")
    return 0


def permutation_test(a: list[float], b: list[float], rounds: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Difference of means (a - b) and its two-sided permutation p-value (with the +1 correction)."""
    import numpy as np

    pooled = np.asarray(a + b, dtype=float)
    observed = float(np.mean(a) - np.mean(b))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        hits += abs(pooled[: len(a)].mean() - pooled[len(a):].mean()) >= abs(observed) - 1e-12
    return observed, (hits + 1) / (rounds + 1)


if __name__ == "__main__":
    sys.exit(main())
