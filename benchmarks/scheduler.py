"""Does the upfront scheduler do on the real clock what it does in simulation, on the same trace?

    .venv/bin/python benchmarks/scheduler.py [--repository model_repository] [--data data/synth] [--loads 0.5,0.8,1.2]

1. **Latency samples.** Every exit at batch 1 through a real Triton (``anytime profile``'s timing, 140 calls per
   exit). They are split: 20 per exit (the gateway's calibration size) are what the simulated scheduler plans
   with; the other 120 are the truth it is simulated against. Planning never sees the samples it is judged on.
2. **Trace.** Per load (a fraction of capacity = 1 / mean latency of the deepest exit), the val split's images
   in a seeded order at Poisson arrivals, budgets uniform in [2 x p95(exit 1), 4 x p95(deepest)], drawn by
   ``loadgen.plan_trace``: the simulator and the real client replay exactly the same requests.
3. **Simulation**, per policy: always exit 1, always the deepest, the anytime scheduler (planning quantile and
   margins as the gateway has them), greedy with true latencies (the same scheduler told each request's true
   service times: a reference, not a bound), and the **upper bound** no policy can beat: every request at the
   deepest exit whose true latency fits its budget in an empty system. The simulated gateway decodes each image
   for the time it took here, and answers after the client-observed transport time measured at idle.
4. **Real clock**, per policy that a gateway can run (anytime; exit 1 and deepest via min_exit = max_exit): the
   trace through ``anytime loadgen``'s client against the real gateway and Triton, met on the client's clock.
   Each real row prints beside the simulator's prediction for it; the simulator is trusted only where the two
   agree within 2 points of budget met.

AP at budget: COCO AP over every request, where a request contributes its exit's detections only if answered
within budget. Writes runs/bench/scheduler.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.eval.coco_eval import coco_metrics, to_coco_results  # noqa: E402
from anytime.serving.latency import LatencyProfile  # noqa: E402
from anytime.serving.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from anytime.serving.simulate import SimRequest, simulate  # noqa: E402

SIM_POLICIES = ("exit 1", "deepest", "anytime", "greedy+truth", "upper bound")
REAL_POLICIES = ("exit 1", "deepest", "anytime")
CALIBRATION = 20  # samples per exit the gateway calibrates with (GatewayConfig.calibration_runs)
TRUTH = 120


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


def measure_samples(repository: Path, runs: int) -> dict[int, np.ndarray]:
    """Batch-1 latency samples (seconds) of every exit through a real Triton, in call order."""
    from anytime.serving.measure import ProfileSettings, run_profile

    prof = run_profile(repository, ProfileSettings(batch_sizes=(1,), runs=runs, warmup=10, backends=("triton",)),
                       progress=lambda m: print(m, file=sys.stderr))
    return {int(e): np.asarray(v[1]["samples_ms"]) / 1e3 for e, v in prof["triton"]["exits"].items()}


def decode_times(dataset, size: int) -> dict[int, float]:
    """Seconds to decode and letterbox each image here: what the simulated gateway spends before it is ready."""
    from anytime.imaging import decode, letterbox

    out = {}
    for image_id in dataset.ids:
        data = (dataset.image_dir / dataset.coco.imgs[image_id]["file_name"]).read_bytes()
        t0 = time.perf_counter()
        letterbox(decode(data), size)
        out[int(image_id)] = time.perf_counter() - t0
    return out


def sim_trace(records, truth: dict[int, np.ndarray], prepare: dict[int, float], respond: float, seed: int):
    """The loadgen trace as simulator requests; each request's true latency is one quantile of the truth
    samples, shared by its exits (a slow moment is slow at every exit)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        u = rng.random()
        true = {("ep", e): float(np.quantile(s, u)) for e, s in truth.items()}
        out.append(SimRequest(arrival=r.arrival_s, budget=r.budget_ms / 1e3, true_latency=true, item=r.image_id,
                              prepare=prepare[r.image_id], respond=respond))
    return out


def run_sim(policy: str, trace, prior: dict[int, np.ndarray], exits: list[int], config: SchedulerConfig):
    """Outcomes per request: (met, exit or None, latency) for one policy on the trace."""
    if policy == "upper bound":  # alone in an empty system: the deepest exit whose true time fits
        out = []
        for q in trace:
            fits = [e for e in exits if q.prepare + q.true_latency[("ep", e)] + q.respond <= q.budget]
            out.append((bool(fits), fits[-1] if fits else None, None))
        return out
    profile = LatencyProfile.from_samples({e: (s * 1e3).tolist() for e, s in prior.items()}, quantile=config.quantile)
    cfg = SchedulerConfig(**{**config.__dict__, "fixed_exit": {"exit 1": exits[0], "deepest": -1}.get(policy)})
    latency_fn = (lambda req, ep, e: trace[req.payload].true_latency[(ep, e)]) if policy == "greedy+truth" else None
    return [(o.met, o.exit if o.status == "OK" else None, o.latency if o.status == "OK" else None)
            for o in simulate(Scheduler({"ep": profile}, cfg, latency_fn), trace)]


def ap_at_budget(outcomes, trace, detections, coco_gt) -> float:
    """COCO AP over every image of the trace; an image scores its exit's detections only if met in time."""
    results = [d for (met, exit, _), q in zip(outcomes, trace) if met for d in detections[str(q.item)][str(exit)]]
    return coco_metrics(coco_gt, results, [q.item for q in trace])["AP"] or 0.0


def idle_respond_time(address: str, dataset, n: int = 40) -> float:
    """Client-observed seconds beyond the gateway's own total, at idle (transport and answer building)."""
    import grpc

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc

    gaps = []
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.DetectorStub(ch)
        for image_id in dataset.ids[:n]:
            data = (dataset.image_dir / dataset.coco.imgs[image_id]["file_name"]).read_bytes()
            t0 = time.perf_counter()
            r = stub.Detect(pb.DetectRequest(encoded=data, budget_ms=10_000))
            gaps.append(time.perf_counter() - t0 - r.timing.total_ms / 1e3)
    return float(np.median(gaps))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--loads", default="0.5,0.8,1.2", help="fractions of capacity at the deepest exit")
    ap.add_argument("--requests", type=int, default=None, help="per load (default: every val image)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-real", action="store_true", help="simulation only")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.ensure import ensure_exported
    from anytime.export.repository import read_manifest
    from anytime.clients.loadgen import evaluate_results, open_dataset, plan_trace, run_setting
    from anytime.serving.stack import ServingStack

    data = args.data or ensure_default(DEFAULT_DATA_DIR)
    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    manifest = read_manifest(args.repository)
    dataset = open_dataset(data)
    coco_gt = dataset.coco
    detections = per_exit_detections(manifest.get("checkpoint") or DEFAULT_CHECKPOINT, data,
                                      args.out / "detections_val.json")
    image_ids = [int(i) for i in dataset.ids]
    n = args.requests or len(image_ids)

    samples = measure_samples(args.repository, CALIBRATION + TRUTH)
    exits = sorted(samples)
    rng = np.random.default_rng(args.seed)
    prior, truth = {}, {}
    for e, s in samples.items():
        order = rng.permutation(len(s))
        prior[e], truth[e] = s[order[:CALIBRATION]], s[order[CALIBRATION:]]
    p95 = {e: float(np.quantile(s, 0.95)) for e, s in samples.items()}
    capacity = 1.0 / float(np.mean(samples[exits[-1]]))
    lo, hi = 2 * p95[exits[0]] * 1e3, 4 * p95[exits[-1]] * 1e3
    budget_spec = f"uniform:{lo:.2f}:{hi:.2f}"
    loads = [float(x) for x in args.loads.split(",")]
    prepare = decode_times(dataset, int(manifest["image_size"]))
    exit_ap = {e: coco_metrics(coco_gt, [r for i in image_ids for r in detections[str(i)][str(e)]], image_ids)["AP"]
               for e in exits}
    print(f"Triton batch-1 p95 per exit (ms): {', '.join(f'{e}: {p95[e] * 1e3:.2f}' for e in exits)}; capacity at "
          f"exit {exits[-1]}: {capacity:.1f} req/s; budgets {budget_spec} ms; {n} requests per load; decode+letterbox "
          f"p50 {np.median(list(prepare.values())) * 1e3:.2f} ms")
    print(f"AP of each exit with no deadline: {', '.join(f'{e}: {exit_ap[e]:.4f}' for e in exits)}")
    config = SchedulerConfig()

    real: dict[tuple[float, str], dict] = {}
    respond = 0.0
    if not args.no_real:
        with ServingStack(args.repository, gateway_args=("--execution", "upfront")) as stack:  # the modelled scheduler
            respond = idle_respond_time(stack.address, dataset)
            print(f"client-side time beyond the gateway's total at idle: {respond * 1e3:.2f} ms", file=sys.stderr)
            for load in loads:
                for policy in REAL_POLICIES:
                    fixed = {"exit 1": (exits[0], exits[0]), "deepest": (exits[-1], exits[-1])}.get(policy, (0, 0))
                    result = asyncio.run(run_setting(stack.address, dataset, budget_spec, load * capacity, n,
                                                     seed=args.seed + int(load * 1000), exits=fixed, progress=False))
                    real[(load, policy)] = evaluate_results(result, coco_gt)
                    print(f"real {policy} @ {load:.0%}: met {real[(load, policy)]['budget_met_rate']:.1%}",
                          file=sys.stderr)
                    time.sleep(1.0)

    rows = []
    for load in loads:
        records = plan_trace(dataset.ids, budget_spec, load * capacity, n, seed=args.seed + int(load * 1000))
        trace = sim_trace(records, truth, prepare, respond, seed=args.seed + 7)
        for policy in SIM_POLICIES:
            out = run_sim(policy, trace, prior, exits, config)
            row = {"load": load, "policy": policy, "sim_met": float(np.mean([m for m, _, _ in out])),
                   "sim_ap": ap_at_budget(out, trace, detections, coco_gt),
                   "sim_exit": float(np.mean([e for _, e, _ in out if e is not None] or [0]))}
            r = real.get((load, policy))
            if r is not None:
                row.update(real_met=r["budget_met_rate"], real_ap=r["AP"] or 0.0, real_status=r["status"],
                           real_p50=r["latency_ms"]["p50"], real_p99=r["latency_ms"]["p99"], real_exits=r["exits"],
                           real_late=r["late"])
            rows.append(row)

    print(f"\n{'load':>5} {'policy':>12} {'sim met':>8} {'real met':>9} {'agree':>6} {'sim AP':>7} {'real AP':>8} "
          f"{'real p50/p99 ms':>16} {'shed':>5} {'late':>5}  real exits used")
    for r in rows:
        if "real_met" in r:
            agree = "yes" if abs(r["sim_met"] - r["real_met"]) <= 0.02 else "NO"
            status = r["real_status"]
            shed = status.get("RESOURCE_EXHAUSTED", 0) + status.get("DEADLINE_EXCEEDED", 0)
            exits_used = " ".join(f"{e}:{c}" for e, c in r["real_exits"].items())
            p50 = "-" if r["real_p50"] is None else f"{r['real_p50']:.1f}/{r['real_p99']:.1f}"
            real_cols = (f"{r['real_met']:>9.1%} {agree:>6} {r['sim_ap']:>7.4f} {r['real_ap']:>8.4f} {p50:>16} "
                         f"{shed:>5} {r['real_late']:>5}  {exits_used}")
        else:
            real_cols = f"{'-':>9} {'':>6} {r['sim_ap']:>7.4f} {'-':>8} {'':>16} {'':>5} {'':>5}"
        print(f"{r['load']:>5.0%} {r['policy']:>12} {r['sim_met']:>8.1%} {real_cols}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scheduler.json").write_text(json.dumps({
        "rows": rows, "budgets": budget_spec, "p95_ms": {e: v * 1e3 for e, v in p95.items()},
        "capacity_rps": capacity, "exit_ap": exit_ap, "respond_ms": respond * 1e3, "requests": n,
        "quantile": config.quantile, "margin_ms": config.margin_ms}, indent=1))
    _plot(rows, args.out / "scheduler.png")
    print(f"\nwrote {args.out / 'scheduler.json'} and {args.out / 'scheduler.png'}")
    return 0


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for k, policy in enumerate(SIM_POLICIES):
        rs = [r for r in rows if r["policy"] == policy]
        x = [r["load"] * 100 for r in rs]
        a.plot(x, [r["sim_ap"] for r in rs], ls="--", marker="o", color=f"C{k}", alpha=0.6, label=f"{policy} (sim)")
        b.plot(x, [r["sim_met"] * 100 for r in rs], ls="--", marker="o", color=f"C{k}", alpha=0.6)
        if all("real_met" in r for r in rs):
            a.plot(x, [r["real_ap"] for r in rs], marker="s", color=f"C{k}", label=f"{policy} (real)")
            b.plot(x, [r["real_met"] * 100 for r in rs], marker="s", color=f"C{k}")
    a.set(title="AP at budget", xlabel="load (% of capacity at the deepest exit)", ylabel="COCO AP")
    b.set(title="requests answered within budget", xlabel="load (% of capacity at the deepest exit)", ylabel="%")
    a.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
