"""Does a proxy rank architectures as full training does? Spearman and Kendall between proxy rewards and AP after
full training, over a set of architectures, for two rewards from the same trials: the last exit's AP and the mean
AP over exits.

Each trial is one trial of ``anytime search`` (``anytime.search.ray_runner.trial_task`` on Ray workers, one torch
thread each). The ground truth is ``anytime eval --json`` of each architecture trained with the full recipe
(``anytime/configs/default.json`` with only the pyramid swapped), given as LABEL=FILE; a label with several files
(several seeds) counts with their mean, and their spread is the re-training noise.

    # the proxy on the set, and on 16 random architectures as candidates for it (their specs go to OUT/archs/)
    .venv/bin/python benchmarks/proxy_fidelity.py --proxy cpu --arch nasfpn --arch fpn-cells --arch searched-cpu \\
        --random 16
    # with the ground truth: the rank correlations and the proxy's top architecture against the best
    .venv/bin/python benchmarks/proxy_fidelity.py --proxy cpu256 --arch nasfpn --arch fpn-cells \\
        --truth docs/eval-reports/nasfpn-seed0.json --truth docs/eval-reports/nasfpn-seed1.json \\
        --truth docs/eval-reports/fpn-cells.json

Resumable: every finished trial stays in OUT/trials/LABEL/result.json and never runs again, so a stopped run
continues where it was with the same command. Prints a table, writes OUT/results.json and OUT/fidelity.png
(default OUT: runs/proxy_fidelity/PRESET).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", default="cpu", help="proxy preset (default: cpu)")
    ap.add_argument("--arch", action="append", default=[], help="a built-in architecture or a JSON file (repeat)")
    ap.add_argument("--random", type=int, default=0, help="random architectures of the search space to score too")
    ap.add_argument("--arch-seed", type=int, default=7, help="seed that draws the random architectures")
    ap.add_argument("--truth", action="append", default=[], metavar="[LABEL=]EVAL.json",
                    help="anytime eval --json of an architecture trained with the full recipe, labelled by its "
                         "pyramid unless LABEL= is given (repeat; several per label: seeds; docs/eval-reports/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="output directory (default: runs/proxy_fidelity/<preset>)")
    args = ap.parse_args(argv)

    from anytime.search.proxy import load_proxy

    out = Path(args.out or f"runs/proxy_fidelity/{args.proxy}")
    proxy = load_proxy(args.proxy)
    archs = candidate_set(args, out)
    truth = read_truth(args.truth)
    t0 = time.perf_counter()
    results = run_trials(archs, proxy, out, args.workers)
    rows = [{"label": label, **results[label], **truth.get(label, {})} for label in archs if label in results]
    summary = fidelity(rows)
    (out / "results.json").write_text(json.dumps({"proxy": proxy.to_dict(), "rows": rows, "summary": summary},
                                                 indent=2) + "\n")
    if summary:
        plot(rows, summary, proxy.name, out / "fidelity.png")
    print(table(rows, summary, proxy.name, time.perf_counter() - t0))
    return 0


def candidate_set(args, out: Path) -> dict:
    """label -> pyramid (a built-in name or a spec dict); random architectures are saved to OUT/archs/ so that
    they can be trained with the full recipe later (``"pyramid": "OUT/archs/randomN.json"``)."""
    import numpy as np

    from anytime.model.spec import PyramidSpec
    from anytime.search.space import SearchSpace

    archs = {}
    for name in args.arch:
        label = Path(name).stem
        archs[label] = PyramidSpec.load(name).to_dict() if Path(name).suffix else name
    if args.random:
        space, rng = SearchSpace(), np.random.default_rng(args.arch_seed)
        (out / "archs").mkdir(parents=True, exist_ok=True)
        for i in range(args.random):
            spec = space.decode(space.sample_uniform(rng), name=f"random{i}")
            spec.to_json(out / "archs" / f"random{i}.json")
            archs[f"random{i}"] = spec.to_dict()
    return archs


def read_truth(items: list[str]) -> dict:
    """label -> {"full_AP": [exit APs, mean over the reports], "full_runs": n, "full_spread": exit-4 max - min}.
    An item is LABEL=FILE or FILE, whose label is its model's pyramid (the name ``--arch`` gives it). The ground
    truth is the full recipe, so a model trained with another number of pyramids (``anytime train --pyramids N``,
    Figure 8a's runs) is labelled PYRAMID-pN and matches no architecture unless named so."""
    import numpy as np

    from anytime.config import CONFIG_DIR, load_model_config
    from anytime.search.ship import spread  # the re-training spread, as the ship rule measures it

    recipe_depth = load_model_config(CONFIG_DIR / "default.json").repeats  # the full recipe's pyramids
    runs: dict[str, list[list[float]]] = {}
    for item in items:
        label, _, path = item.rpartition("=")
        report = json.loads(Path(path).read_text())
        if not label:
            label = Path(report["model"]["pyramid"]).stem
            if report["model"].get("repeats", recipe_depth) != recipe_depth:
                label += f"-p{report['model']['repeats']}"
        runs.setdefault(label, []).append([e["AP"] for e in report["exits"]])
    return {label: {"full_AP": np.mean(aps, axis=0).round(4).tolist(), "full_runs": len(aps),
                    "full_spread": round(spread(aps), 4)} for label, aps in runs.items()}


def run_trials(archs: dict, proxy, out: Path, workers: int) -> dict:
    """label -> {"reward_last", "reward_mean", "AP_exits", "seconds"}, running only the trials not yet done."""
    from anytime.search.proxy import prepare
    from anytime.search.ray_runner import RayRunner
    from anytime.search.trial import reward_of

    cache = str(Path("data/search-proxy").resolve())
    results, todo = {}, []
    for label, pyramid in archs.items():
        done = out / "trials" / label / "result.json"
        if done.is_file():
            results[label] = json.loads(done.read_text())
        else:
            todo.append(label)
    print(f"{len(results)} trial(s) done before, {len(todo)} to run on preset {proxy.name!r}", file=sys.stderr)
    if not todo:
        return results
    prepare(proxy, cache)
    with RayRunner(workers=workers) as runner:
        while todo or runner.in_flight:
            while todo and runner.in_flight < workers:
                label = todo.pop(0)
                runner.submit(label, archs[label], proxy.to_dict(), cache, str((out / "trials" / label / "run").resolve()))
            label, result = runner.wait()
            if result["status"] != "ok":
                print(f"  {label}: failed ({result.get('error')})", file=sys.stderr, flush=True)
                continue
            metrics = result["metrics"]
            row = {"reward_last": reward_of(metrics, "last"), "reward_mean": reward_of(metrics, "mean"),
                   "AP_exits": [metrics[f"AP_exit{k}"] for k in range(1, len(metrics) + 1)],
                   "seconds": result["seconds"]}
            (out / "trials" / label / "result.json").write_text(json.dumps(row) + "\n")
            results[label] = row
            print(f"  {label}: last {row['reward_last']:.4f}, mean {row['reward_mean']:.4f} "
                  f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return results


def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    import numpy as np

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def kendall(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list lower the denominator)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    n = concordant + discordant
    return (concordant - discordant) / (((n + ties_x) * (n + ties_y)) ** 0.5) if n else float("nan")


def fidelity(rows: list[dict]) -> dict:
    """For each reward against each full-training measure: Spearman, Kendall, and the proxy's top architecture's
    full AP against the best full AP in the set (``gap``; the goal: within the re-training noise)."""
    scored = [r for r in rows if "full_AP" in r]
    if len(scored) < 3:
        return {}
    out = {}
    for reward in ("reward_last", "reward_mean"):
        for measure, full in (("last exit", lambda r: r["full_AP"][-1]), ("mean over exits",
                                                                          lambda r: sum(r["full_AP"]) / len(r["full_AP"]))):
            x, y = [r[reward] for r in scored], [full(r) for r in scored]
            top = max(scored, key=lambda r: r[reward])
            out[f"{reward} vs {measure}"] = {
                "spearman": round(spearman(x, y), 3), "kendall": round(kendall(x, y), 3), "n": len(scored),
                "proxy_top": top["label"], "gap": round(max(y) - full(top), 4)}
    spreads = [r["full_spread"] for r in scored if r.get("full_runs", 1) > 1]
    out["retraining_noise"] = max(spreads) if spreads else None
    return out


def table(rows: list[dict], summary: dict, preset: str, seconds: float) -> str:
    lines = [f"Proxy {preset!r}: rewards from the same trials, and AP after full training where known", "",
             "| architecture | reward: last exit | reward: mean over exits | trial s | full AP exit 1 .. N |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["reward_last"]):
        full = " / ".join(f"{a:.3f}" for a in r["full_AP"]) if "full_AP" in r else ""
        lines.append(f"| {r['label']} | {r['reward_last']:.4f} | {r['reward_mean']:.4f} | {r['seconds']:.0f} | {full} |")
    if summary:
        lines += ["", "| reward vs full-training AP | Spearman | Kendall | proxy's top | its gap to the best |",
                  "|---|---|---|---|---|"]
        for key, s in summary.items():
            if isinstance(s, dict):
                lines.append(f"| {key} | {s['spearman']:.3f} | {s['kendall']:.3f} | {s['proxy_top']} | {s['gap']:.4f} |")
        lines.append(f"\nre-training noise (exit 4, max - min over seeds): {summary['retraining_noise']}")
    lines.append(f"wall time of this run {seconds / 60:.1f} min; mean trial "
                 f"{sum(r['seconds'] for r in rows) / max(len(rows), 1) / 60:.1f} min of one core")
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, preset: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    for ax, reward in zip(fig.subplots(1, 2), ("reward_last", "reward_mean")):
        scored = [r for r in rows if "full_AP" in r]
        ax.scatter([r[reward] for r in scored], [r["full_AP"][-1] for r in scored])
        for r in scored:
            ax.annotate(r["label"], (r[reward], r["full_AP"][-1]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        s = summary[f"{reward} vs last exit"]
        ax.set_title(f"{reward.replace('_', ': ')}  (Spearman {s['spearman']:.2f}, Kendall {s['kendall']:.2f})",
                     fontsize=10)
        ax.set_xlabel(f"proxy reward ({preset})")
        ax.set_ylabel("AP at the last exit, full training")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
