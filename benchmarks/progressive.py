"""Progressive execution or upfront: which meets more budgets through the real gateway and Triton, at what cost?

Progressive execution against upfront, on the default model, through the real gateway and Triton:

    .venv/bin/python benchmarks/progressive.py [--parts overhead,throughput,trace,noise,memory]

- ``overhead``: one request at a time to the deepest exit, upfront (the exit model, one call) against progressive
  (every stage's features in turn, then exit K's head), the two stacks up together and taking turns; p50 on the
  client's clock through the gateway (the goal: at most 1.15x) and straight to Triton (the exit model's call
  against the progressive model's stream), and the graphs alone in this process (the exit's graph against the
  steps' graphs in turn: the floor of splitting the model, before any serving cost).
- ``throughput``: closed loop, 16 clients sending back to back with a loose budget for 15 s, in halves taken in the
  order upfront, progressive, progressive, upfront: answers per second, progressive with stage batching against
  upfront (goal: at least 1.5x). Beside it, from ``overhead``'s graphs, the ceiling stage batching has on this
  machine: the steps' ms per image at batch 1-8 against the exit graph's at batch 1.
- ``trace``: the scheduler benchmark's trace (every val image, Poisson arrivals, budgets uniform in
  [2 x p95(exit 1), 4 x p95(deepest)]) at 50, 80, 120 and 200% of capacity, through upfront, progressive without
  stage batching (max_stage_batch 1) and progressive with it: met on the client's clock, AP at budget, p50/p99,
  exits used. Goals: at 80% load at least 99.9% of admitted requests within budget; AP at budget at least
  upfront's at every load.
- ``noise``: the 80% trace again with a busy loop on one core during its middle third (goal: progressive keeps at
  least 99% within budget); upfront beside it.
- ``memory``: resident memory of tritonserver and its python stubs with the stage layout (the progressive model
  alone) against the per-exit layout (every exit model), for the default model and for r50-nasfpn-7@256 at 640
  with random weights (no verification: it is the memory that is measured).

Capacity and budgets come from the upfront gateway's own latency profile (GetModelInfo), measured at the start of
the run. For ``trace`` and ``noise``, the three stacks are up together and take turns at each load, in an order
that alternates from load to load, so that a drift of the machine's speed weighs on every mode alike. Writes
runs/bench/progressive.json and runs/bench/progressive.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOADS = (0.5, 0.8, 1.2, 2.0)
MODES = {"upfront": ("upfront", None), "progressive, no batching": ("progressive", 1),
         "progressive": ("progressive", None)}


def repository_variant(source: Path, work: Path, max_stage_batch: int | None) -> Path:
    """The repository itself, or a copy whose progressive model batches at most ``max_stage_batch``."""
    if max_stage_batch is None:
        return source
    from anytime.export.repository import PROGRESSIVE_MODEL

    out = work / f"repo-b{max_stage_batch}"
    if not out.exists():
        shutil.copytree(source, out)
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        path = out / PROGRESSIVE_MODEL / "config.pbtxt"
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
        cfg.parameters["max_stage_batch"].string_value = str(max_stage_batch)
        path.write_text(text_format.MessageToString(cfg))
    return out


def stack_for(repo: Path, execution: str):
    from anytime.serving.stack import ServingStack

    # Triton restarted when it dies, as in `anytime serve`: a crash costs the requests of its outage, not the rest of
    # the run; each row reports the restarts during it
    return ServingStack(repo, gateway_args=("--execution", execution), restart_triton=True)


def model_info(address: str):
    import grpc

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as ch:
        return pb_grpc.DetectorStub(ch).GetModelInfo(pb.ModelInfoRequest())


# -- overhead and throughput ----------------------------------------------------------------------------------------
async def alternate(calls: dict, runs: int, warmup: int = 10) -> dict[str, np.ndarray]:
    """Milliseconds per call of each of ``calls`` (name -> a coroutine function or a plain one), one call at a time,
    the calls taking turns (one round in order, the next reversed), so that a drift of the machine's speed weighs on
    each alike. Each call is timed by the project's one timing loop (``time_calls``), one call per turn."""
    from anytime.serving.measure import time_calls

    names = list(calls)
    out = {n: [] for n in names}
    for i in range(warmup + runs):
        for name in names if i % 2 == 0 else names[::-1]:
            seconds = await time_calls(calls[name], 1, 0)
            if i >= warmup:
                out[name] += seconds
    return {n: np.asarray(v) * 1e3 for n, v in out.items()}


async def serving_overhead(up, progressive, data: bytes, pixels: np.ndarray, exit: int, runs: int) -> dict:
    """One request at a time to ``exit``, upfront against progressive taking turns, on two paths: through each
    stack's gateway (the goal's measure) and straight to its Triton (the exit model's one call against the
    progressive model's stream), so that what the gateway adds is told from what the model adds."""
    import grpc
    import tritonclient.grpc.aio as triton_aio

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc
    from anytime.export.repository import read_manifest
    from anytime.serving.measure import infer_exit, stream_progressive

    manifest = read_manifest(up.repository)
    model = next(e["model"] for e in manifest["exits"] if e["exit"] == exit)
    request = pb.DetectRequest(encoded=data, budget_ms=10_000, min_exit=exit, max_exit=exit)
    async with grpc.aio.insecure_channel(up.address) as a, grpc.aio.insecure_channel(progressive.address) as b:
        gateways = {s: pb_grpc.DetectorStub(ch) for s, ch in (("upfront", a), ("progressive", b))}
        tritons = {"upfront": triton_aio.InferenceServerClient(up.tritons[0].grpc_url),
                   "progressive": triton_aio.InferenceServerClient(progressive.tritons[0].grpc_url)}

        async def via_gateway(mode):
            r = await gateways[mode].Detect(request)
            assert r.exit == exit, r.exit

        async def stream():
            exits = [e async for e, _ in stream_progressive(tritons["progressive"], manifest["progressive"]["model"],
                                                            pixels, 10_000.0, (exit, exit))]
            assert exits == [exit], exits

        try:
            ms = await alternate({"gateway upfront": lambda: via_gateway("upfront"),
                                  "gateway progressive": lambda: via_gateway("progressive"),
                                  "triton upfront": lambda: infer_exit(tritons["upfront"], model, pixels, 10.0),
                                  "triton progressive": stream}, runs)
        finally:
            for client in tritons.values():
                await client.close()
    return {path: {mode: {"p50": float(np.percentile(ms[f"{path} {mode}"], 50)),
                          "p95": float(np.percentile(ms[f"{path} {mode}"], 95))} for mode in ("upfront", "progressive")}
            for path in ("gateway", "triton")}


def graph_sessions(repo: Path, exit: int):
    """ONNX Runtime sessions made as the served models make them (the runtime's threads, no spinning): the
    monolithic model of ``exit``, and the progressive model's steps to it (features 1..exit, then head exit)."""
    import onnxruntime as ort

    from anytime.export.repository import PROGRESSIVE_MODEL, read_manifest

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def session(path):
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    manifest = read_manifest(repo)
    model = next(e["model"] for e in manifest["exits"] if e["exit"] == exit)
    stages = {s["stage"]: s for s in manifest["progressive"]["stages"]}
    d = repo / PROGRESSIVE_MODEL / "1"
    chain = [session(d / stages[k]["features"]) for k in range(1, exit + 1)] + [session(d / stages[exit]["head"])]
    return session(repo / model / "1" / "model.onnx"), chain


def run_chain(chain, images: np.ndarray):
    """The progressive model's steps in turn, each step's outputs the next one's inputs (in their order)."""
    out = chain[0].run(None, {chain[0].get_inputs()[0].name: images})
    for step in chain[1:]:
        out = step.run(None, dict(zip((i.name for i in step.get_inputs()), out)))
    return out


def graph_times(repo: Path, exit: int, image_size: int, runs: int, sizes=(1, 2, 4, 8)) -> dict:
    """The graphs alone, in this process (the served stacks idle): p50 ms of the monolithic exit against the chain
    of steps at batch 1, taking turns (the floor of splitting the model into stages, before any serving cost), and
    ms per image of the chain at each batch size (what stage batching can gain on this machine's graphs)."""
    mono, chain = graph_sessions(repo, exit)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 3, image_size, image_size), dtype=np.uint8)
    name = mono.get_inputs()[0].name
    ms = asyncio.run(alternate({"monolithic": lambda: mono.run(None, {name: one}),
                                "chain": lambda: run_chain(chain, one)}, runs))
    per_image = {}
    for _ in range(3):  # rounds over the sizes; the median of the rounds' medians
        for b in sizes:
            images = rng.integers(0, 256, (b, 3, image_size, image_size), dtype=np.uint8)
            t = asyncio.run(alternate({"chain": lambda: run_chain(chain, images)}, max(5, runs // (4 * b)), 2))
            per_image.setdefault(b, []).append(float(np.median(t["chain"])) / b)
    return {"monolithic": float(np.median(ms["monolithic"])), "chain": float(np.median(ms["chain"])),
            "chain_per_image": {str(b): float(np.median(v)) for b, v in per_image.items()}}


async def closed_loop(address: str, data: bytes, clients: int, seconds: float, budget_ms: float) -> dict:
    import grpc

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc

    done, exits, errors = 0, [], 0
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.DetectorStub(ch)
        await stub.GetModelInfo(pb.ModelInfoRequest())
        stop = time.perf_counter() + seconds

        async def client():
            nonlocal done, errors
            while time.perf_counter() < stop:
                try:
                    r = await stub.Detect(pb.DetectRequest(encoded=data, budget_ms=budget_ms), timeout=10)
                    done += 1
                    exits.append(r.exit)
                except grpc.aio.AioRpcError:
                    errors += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"answers": done, "seconds": elapsed, "errors": errors, "exits": exits}


def saturation(stacks: dict, data: bytes, clients: int = 16, seconds: float = 15.0) -> dict:
    """Closed loop, ``clients`` sending back to back with a loose budget: answers per second of each stack, in
    two halves taken in the order A B B A (a linear drift of the machine's speed cancels out)."""
    order = list(stacks) + list(stacks)[::-1]
    parts = {mode: [] for mode in stacks}
    for mode in order:
        parts[mode].append(asyncio.run(closed_loop(stacks[mode].address, data, clients, seconds / 2, 5000)))
    out = {}
    for mode, halves in parts.items():
        exits = [e for h in halves for e in h["exits"]]
        out[mode] = {"answers_per_s": sum(h["answers"] for h in halves) / sum(h["seconds"] for h in halves),
                     "errors": sum(h["errors"] for h in halves), "mean_exit": float(np.mean(exits)) if exits else 0.0}
    return out


# -- the trace ------------------------------------------------------------------------------------------------------------
def busy_loop(start_at: float, stop_at: float) -> None:
    """A noisy neighbour: one core spinning from ``start_at`` to ``stop_at`` (wall clock)."""
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        pass


def trace_settings(address: str) -> tuple[dict, dict, float, str]:
    """The upfront gateway's profile at ``address`` as (p50, p95) ms per exit, the capacity (requests/s at the
    deepest exit's p50) that loads are a share of, and the trace's budgets: uniform in [2 x p95(exit 1),
    4 x p95(deepest)]."""
    profile = model_info(address).endpoints[0].profile
    p50 = {p.exit: p.p50_ms for p in profile}
    p95 = {p.exit: p.p95_ms for p in profile}
    first, deepest = min(p95), max(p95)
    return p50, p95, 1000.0 / p50[deepest], f"uniform:{2 * p95[first]:.2f}:{4 * p95[deepest]:.2f}"


def admitted_records(records) -> list:
    """The requests not refused on arrival (overload, or a budget below the first exit's predicted latency)."""
    return [r for r in records if r.status == "OK" or r.status == "DEADLINE_EXCEEDED" and
            "below the fastest exit" not in r.error]


def run_trace(address: str, dataset, budgets: str, rate: float, n: int, seed: int, noise: bool) -> dict:
    from anytime.clients.loadgen import evaluate_results, plan_trace, run_setting

    hog = None
    if noise:  # one core busy for the middle third of the trace
        duration = plan_trace(dataset.ids, budgets, rate, n, seed)[-1].arrival_s
        hog_start = time.time() + duration / 3
        hog = multiprocessing.Process(target=busy_loop, args=(hog_start, hog_start + duration / 3))
        hog.start()
    try:
        result = asyncio.run(run_setting(address, dataset, budgets, rate, n, seed=seed, progress=False))
    finally:
        if hog is not None:
            hog.join()
    summary = evaluate_results(result, dataset.coco)
    admitted = admitted_records(result.records)
    summary["admitted"] = len(admitted)
    summary["admitted_met_rate"] = (sum(r.budget_met for r in admitted) / len(admitted)) if admitted else None
    return summary


# -- memory --------------------------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and all its descendants (tritonserver and its python stubs)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def layout_memory(repo: Path, models: list[str]) -> float:
    from anytime.serving.triton import TritonServer, free_ports

    http, grpc_port, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics, model_control_mode="explicit",
                      load_models=tuple(models), ready_timeout_s=600) as t:
        time.sleep(2)
        return rss_mb(t.pid)


def memory(default_repo: Path, work: Path, progress) -> dict:
    from anytime.config import load_model_config
    from anytime.export.exporter import export_repository
    from anytime.export.repository import read_manifest
    from anytime.model import AnytimeRetinaNet

    out = {}
    repos = {"default": default_repo}
    r50 = work / "r50-nasfpn-7"
    if not (r50 / "manifest.json").exists():
        progress("exporting r50-nasfpn-7@256 at 640 with random weights (slow)")
        model = AnytimeRetinaNet(load_model_config("r50-nasfpn-7@256")).eval()
        export_repository(model, {}, r50, verify=False, progress=progress)
    repos["r50-nasfpn-7@256 @640"] = r50
    for name, repo in repos.items():
        manifest = read_manifest(repo)
        exits = [e["model"] for e in manifest["exits"]]
        stages = manifest["progressive"]["model"]
        out[name] = {"per-exit layout": layout_memory(repo, exits), "stage layout": layout_memory(repo, [stages])}
        progress(f"memory {name}: {out[name]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--parts", default="overhead,throughput,trace,noise,memory")
    ap.add_argument("--requests", type=int, default=None, help="per trace setting (default: every val image)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    from anytime.clients.loadgen import open_dataset
    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.data import DEFAULT_DATA_DIR
    from anytime.data.synth import ensure_default
    from anytime.export.ensure import ensure_exported

    def log(message):
        print(message, file=sys.stderr, flush=True)

    data = args.data or ensure_default(DEFAULT_DATA_DIR)
    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    dataset = open_dataset(data)
    png = (dataset.image_dir / dataset.coco.imgs[dataset.ids[0]]["file_name"]).read_bytes()
    work = Path(tempfile.mkdtemp(prefix="anytime-progressive-"))
    report: dict = {}

    with stack_for(args.repository, "upfront") as s:
        p50, p95, capacity, budgets = trace_settings(s.address)
    exits = sorted(p95)
    n = args.requests or len(dataset)
    report["profile"] = {"p50_ms": p50, "p95_ms": p95, "capacity_rps": capacity, "budgets": budgets}
    log(f"upfront profile p50 {p50}, capacity {capacity:.1f}/s at exit {exits[-1]}, budgets {budgets}")

    if "overhead" in parts or "throughput" in parts:
        with contextlib.ExitStack() as up:
            stacks = {mode: up.enter_context(stack_for(args.repository, mode)) for mode in ("upfront", "progressive")}
            if "overhead" in parts:
                size = model_info(stacks["upfront"].address).image_size
                pixels = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
                o = asyncio.run(serving_overhead(stacks["upfront"], stacks["progressive"], png, pixels, exits[-1],
                                                 args.runs))
                o["graphs"] = graph_times(args.repository, exits[-1], size, args.runs)
                report["overhead"] = o
                log(f"overhead: {o}")
            if "throughput" in parts:
                report["throughput"] = saturation(stacks, png)
                log(f"throughput: {report['throughput']}")

    if "trace" in parts or "noise" in parts:
        # Every mode's stack is up for the whole part, and the modes take turns at each load, in an order that
        # alternates from one load to the next: this machine's speed drifts over minutes (upfront alone met 54-88%
        # at 50% load from one run to the next), and one mode after the other would put that drift between them.
        with contextlib.ExitStack() as up:
            stacks = {label: up.enter_context(stack_for(repository_variant(args.repository, work, batch), execution))
                      for label, (execution, batch) in MODES.items()}
            turns = [(load, False) for load in (LOADS if "trace" in parts else ())]
            turns += [(0.8, True)] if "noise" in parts else []
            for i, (load, noise) in enumerate(turns):
                labels = [m for m in MODES if not noise or m != "progressive, no batching"]
                for label in labels if i % 2 == 0 else labels[::-1]:
                    s = stacks[label]
                    restarts = s.restarts
                    r = run_trace(s.address, dataset, budgets, load * capacity, n,
                                  args.seed + (800 if noise else int(load * 1000)), noise)
                    r["triton_restarts"] = s.restarts - restarts
                    if noise:
                        report.setdefault("noise", {})[label] = r
                        log(f"noise {label}: met {r['budget_met_rate']:.1%}")
                    else:
                        report.setdefault("trace", {}).setdefault(label, {})[str(load)] = r
                        log(f"trace {label} @ {load:.0%}: met {r['budget_met_rate']:.1%}, admitted met "
                            f"{r['admitted_met_rate']}, AP {r['AP']:.4f}")

    if "memory" in parts:
        report["memory"] = memory(args.repository, work, log)
    shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "progressive.json").write_text(json.dumps(report, indent=1))
    if "trace" in report:
        plot(report, args.out / "progressive.png")
    print(f"\nwrote {args.out / 'progressive.json'}" + (" and progressive.png" if "trace" in report else ""))
    return 0


def outage(row: dict) -> str:
    """What a row met of a Triton that died: the restarts and the requests answered UNAVAILABLE (say so, never
    average it away)."""
    down, restarts = row["status"].get("UNAVAILABLE", 0), row.get("triton_restarts", 0)
    if not down and not restarts:
        return ""
    return f"  [Triton restarted {restarts}x; UNAVAILABLE: {down} of {row['requests']}]"


def print_report(report: dict) -> None:
    if "overhead" in report:
        o = report["overhead"]
        print("1. Overhead at batch 1, the deepest exit, one request at a time, upfront and progressive taking turns "
              "(p50 ms):")
        print(f"   {'path':52} {'upfront':>8} {'progressive':>12} {'ratio':>6}")
        rows = [("client -> gateway -> Triton (goal <= 1.15x)", o["gateway"]["upfront"]["p50"],
                 o["gateway"]["progressive"]["p50"]),
                ("client -> Triton (exit model / progressive stream)", o["triton"]["upfront"]["p50"],
                 o["triton"]["progressive"]["p50"]),
                ("ONNX Runtime in process (exit graph / the steps)", o["graphs"]["monolithic"], o["graphs"]["chain"])]
        for label, a, b in rows:
            print(f"   {label:52} {a:>8.2f} {b:>12.2f} {b / a:>5.2f}x")
    if "throughput" in report:
        t = report["throughput"]
        print(f"2. Saturation throughput (16 clients, closed loop, halves in the order A B B A): upfront "
              f"{t['upfront']['answers_per_s']:.1f}/s, progressive {t['progressive']['answers_per_s']:.1f}/s: "
              f"{t['progressive']['answers_per_s'] / t['upfront']['answers_per_s']:.2f}x (goal >= 1.5x)")
        if "overhead" in report:
            g = report["overhead"]["graphs"]
            per = g["chain_per_image"]
            best = min(per.values())
            print("   the graphs' ceiling for stage batching: ms per image of the steps at batch "
                  + ", ".join(f"{b}: {ms:.2f}" for b, ms in per.items())
                  + f" against the exit graph's {g['monolithic']:.2f} at batch 1: at most "
                  f"{g['monolithic'] / best:.2f}x before any serving cost, and less against upfront, whose exit "
                  "models Triton's dynamic batcher batches too")
    if "trace" in report:
        print("3. Real-clock trace (met: all requests, client's clock; admitted met: of those not refused at once)")
        print(f"{'load':>5} {'execution':>26} {'met':>7} {'admitted met':>13} {'AP@budget':>10} {'p50/p99 ms':>14}  exits used")
        for label, per_load in report["trace"].items():
            for load, r in per_load.items():
                lat = r["latency_ms"]
                p = "-" if lat["p50"] is None else f"{lat['p50']:.1f}/{lat['p99']:.1f}"
                am = "-" if r["admitted_met_rate"] is None else f"{r['admitted_met_rate']:.1%}"
                print(f"{float(load):>5.0%} {label:>26} {r['budget_met_rate']:>7.1%} {am:>13} {r['AP'] or 0:>10.4f} "
                      f"{p:>14}  {' '.join(f'{e}:{c}' for e, c in r['exits'].items())}{outage(r)}")
    if "noise" in report:
        print("4. 80% load, one core busy for the middle third: " + ", ".join(
            f"{label} met {r['budget_met_rate']:.1%} (admitted {r['admitted_met_rate']:.1%}){outage(r)}"
            for label, r in report["noise"].items()))
    if "memory" in report:
        print("5. Resident memory of tritonserver + python stubs (MB): " + "; ".join(
            f"{name}: per-exit {m['per-exit layout']:.0f}, stages {m['stage layout']:.0f}"
            for name, m in report["memory"].items()))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (label, per_load) in enumerate(report["trace"].items()):
        loads = [float(x) * 100 for x in per_load]
        a.plot(loads, [r["AP"] or 0 for r in per_load.values()], marker="o", color=f"C{k}", label=label)
        b.plot(loads, [100 * r["budget_met_rate"] for r in per_load.values()], marker="o", color=f"C{k}", label=label)
    a.set(title="AP at budget (real clock)", xlabel="load (% of upfront capacity at the deepest exit)", ylabel="COCO AP")
    b.set(title="answered within budget", xlabel="load (% of upfront capacity at the deepest exit)", ylabel="%")
    a.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
