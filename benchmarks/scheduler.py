"""Scheduler benchmark: the anytime scheduler against three baselines on the same arrival trace and budgets.

    .venv/bin/python benchmarks/scheduler.py [--repository model_repository] [--data data/synth] [--rounds 3]

Policies: always exit 1, always the deepest exit, the anytime scheduler (plans with the p95 of the measured
latency distribution), and an oracle (the same scheduler told each request's true latency per exit).
Loads are 50%, 80% and 120% of capacity, where capacity is what one slot serves at the deepest exit (1 / mean
latency). Each request is one image of the val split; its true service time per exit is drawn from the latency
samples that `anytime profile` measured through Triton (one shared quantile per request, so a slow request is
slow at every exit). AP at budget is COCO AP over all requests, where a request contributes the detections of
the exit it got only if it was answered within its budget. Budget-met is counted over requests whose budget is
feasible (at least exit 1's p95 in an idle system). Budgets are uniform between 2x exit 1's p95 and 4x the
deepest exit's p95 by default (--budget-range): a budget at exactly exit 1's idle latency cannot be met by any
policy once another request is in service. Prints a table and writes runs/bench/scheduler.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.eval.coco_eval import coco_metrics, to_coco_results  # noqa: E402
from anytime.serve.profile import LatencyProfile  # noqa: E402
from anytime.serve.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from anytime.serve.simulate import SimRequest, simulate  # noqa: E402

LOADS = (0.5, 0.8, 1.2)
POLICIES = ("exit 1", "deepest", "anytime", "oracle")


def per_exit_detections(checkpoint, data_dir, cache: Path):
    """COCO results per image per exit of the model on the val split (computed once per checkpoint, cached).

    The cache records the checkpoint's sha256, so a retrained model never reuses another model's detections.
    """
    from anytime.export.repository import sha256_file

    digest = sha256_file(checkpoint)
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("checkpoint_sha256") == digest:
            return cached["detections"]
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from anytime.data.coco import CocoDetection, collate, find_split
    from anytime.data.transforms import eval_transform
    from anytime.train.checkpoint import load_model

    model, meta = load_model(checkpoint)
    ds = CocoDetection(*find_split(data_dir, "val"), transform=eval_transform(model.cfg.image_size))
    out = {}
    with torch.inference_mode():
        for images, targets in tqdm(DataLoader(ds, batch_size=8, collate_fn=collate), desc="detections", file=sys.stderr):
            for k, per_image in model.detect(images).items():
                for det, t in zip(per_image, targets):
                    out.setdefault(str(t["image_id"]), {})[str(k)] = to_coco_results(det, t, ds.cat_ids)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"checkpoint_sha256": digest, "detections": out}))
    return out


def latency_samples(manifest: dict) -> dict[int, np.ndarray]:
    prof = (manifest.get("latency_profile") or {}).get("triton")
    if not prof:
        raise SystemExit("the manifest has no Triton latency profile: run `anytime profile` first")
    return {int(e): np.sort(np.asarray(v[str(1)]["samples_ms"] if str(1) in v else v[1]["samples_ms"])) / 1e3
            for e, v in prof["exits"].items()}


def make_trace(images: list[str], samples: dict[int, np.ndarray], rate: float, budgets: tuple[float, float], seed: int):
    rng = random.Random(seed)
    order = images[:]
    rng.shuffle(order)
    t, trace = 0.0, []
    for img in order:
        t += rng.expovariate(rate)
        u = rng.random()  # the request's latency quantile, shared by all exits
        true = {("ep", e): float(np.quantile(s, u)) for e, s in samples.items()}
        budget = rng.uniform(*budgets)
        trace.append(SimRequest(arrival=t, budget=budget, true_latency=true, item=int(img)))
    return trace


def run_policy(policy: str, trace, samples, quantile: float):
    prior = {e: {1: {"samples_ms": (s * 1e3).tolist()}} for e, s in samples.items()}
    profile = LatencyProfile(prior, quantile=quantile)
    cfg = SchedulerConfig(quantile=quantile, margin_ms=0.0,
                          fixed_exit={"exit 1": 1, "deepest": -1}.get(policy))
    latency_fn = (lambda req, ep, e: trace[req.payload].true_latency[(ep, e)]) if policy == "oracle" else None
    return simulate(Scheduler({"ep": profile}, cfg, latency_fn), trace)


def ap_at_budget(outcomes, detections, coco_gt, image_ids) -> float:
    results = []
    for o in outcomes:
        if o.met:
            results += detections[str(o.item)][str(o.exit)]
    return coco_metrics(coco_gt, results, image_ids)["AP"] or 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--rounds", type=int, default=3, help="traces per load (each sends every val image once)")
    ap.add_argument("--quantile", type=float, default=0.95, help="latency quantile the anytime scheduler plans with")
    ap.add_argument("--budget-range", default="2,4", help="budgets are uniform in [A x p95(exit 1), B x p95(deepest)]")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.data.coco import CocoDetection, find_split
    from anytime.export.repository import read_manifest

    manifest = read_manifest(args.repository)
    samples = latency_samples(manifest)
    exits = sorted(samples)
    detections = per_exit_detections(args.checkpoint or manifest.get("checkpoint") or DEFAULT_CHECKPOINT, args.data,
                                      args.out / "detections_val.json")
    coco_gt = CocoDetection(*find_split(args.data, "val")).coco
    images = sorted(detections, key=int)
    image_ids = [int(i) for i in images]
    p95 = {e: float(np.quantile(s, 0.95)) for e, s in samples.items()}
    capacity = 1.0 / float(np.mean(samples[exits[-1]]))
    lo, hi = (float(x) for x in args.budget_range.split(","))
    budgets = (lo * p95[exits[0]], hi * p95[exits[-1]])
    exit_ap = {e: coco_metrics(coco_gt, [r for i in images for r in detections[i][str(e)]], image_ids)["AP"] for e in exits}
    print(f"latency p95 per exit (ms): {', '.join(f'{e}: {p95[e] * 1e3:.2f}' for e in exits)}; "
          f"capacity at exit {exits[-1]}: {capacity:.1f} req/s; budgets uniform in "
          f"[{budgets[0] * 1e3:.1f}, {budgets[1] * 1e3:.1f}] ms; {len(images)} images x {args.rounds} rounds per load")
    print(f"AP of each exit with no deadline: {', '.join(f'{e}: {exit_ap[e]:.4f}' for e in exits)}")

    rows = []
    for load in LOADS:
        for policy in POLICIES:
            met, ap_vals, shed, exit_mean = [], [], [], []
            for r in range(args.rounds):
                trace = make_trace(images, samples, load * capacity, budgets, seed=1000 * r + int(load * 100))
                out = run_policy(policy, trace, samples, args.quantile)
                feasible = [o for o, q in zip(out, trace) if q.budget >= p95[exits[0]]]
                met.append(np.mean([o.met for o in feasible]))
                shed.append(np.mean([o.status == "RESOURCE_EXHAUSTED" for o in out]))
                exit_mean.append(np.mean([o.exit for o in out if o.status == "OK"] or [0]))
                ap_vals.append(ap_at_budget(out, detections, coco_gt, image_ids))
            rows.append({"load": load, "policy": policy, "budget_met": float(np.mean(met)),
                         "ap_at_budget": float(np.mean(ap_vals)), "shed": float(np.mean(shed)),
                         "mean_exit": float(np.mean(exit_mean))})
    for load in LOADS:
        oracle = next(r["ap_at_budget"] for r in rows if r["load"] == load and r["policy"] == "oracle")
        for r in rows:
            if r["load"] == load:
                r["ap_vs_oracle"] = r["ap_at_budget"] / oracle if oracle else float("nan")

    print(f"\n{'load':>5} {'policy':>8} {'budget met':>11} {'AP@budget':>10} {'AP/oracle':>10} {'shed':>6} {'mean exit':>10}")
    for r in rows:
        print(f"{r['load']:>5.0%} {r['policy']:>8} {r['budget_met']:>11.2%} {r['ap_at_budget']:>10.4f} "
              f"{r['ap_vs_oracle']:>10.2%} {r['shed']:>6.1%} {r['mean_exit']:>10.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scheduler.json").write_text(json.dumps({"rows": rows, "budgets_ms": [b * 1e3 for b in budgets],
                                                         "quantile": args.quantile, "p95_ms": {e: v * 1e3 for e, v in p95.items()},
                                                         "capacity_rps": capacity, "exit_ap": exit_ap}, indent=1))
    _plot(rows, args.out / "scheduler.png")
    print(f"\nwrote {args.out / 'scheduler.json'} and {args.out / 'scheduler.png'}")
    return 0


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for policy in POLICIES:
        rs = [r for r in rows if r["policy"] == policy]
        a.plot([r["load"] * 100 for r in rs], [r["ap_at_budget"] for r in rs], marker="o", label=policy)
        b.plot([r["load"] * 100 for r in rs], [r["budget_met"] * 100 for r in rs], marker="o", label=policy)
    a.set(title="AP at budget", xlabel="load (% of capacity at the deepest exit)", ylabel="COCO AP")
    b.set(title="feasible budgets met", xlabel="load (% of capacity at the deepest exit)", ylabel="%")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
