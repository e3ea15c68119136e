"""Every served option (input size, exit), idle, one request at a time, pinned: its latency end to end, its AP, and
the frontier they draw; plus what serving every option costs in memory.

    .venv/bin/python benchmarks/options.py [--sets photos,bench] [--requests 60] [--rounds 3] [--plots-to docs]

Through the real gateway and the real Triton, on the client's clock (``DetectRequest.option`` pins the option):

- **end to end**: p50 and p95 of ``--requests`` requests per option and image set, sent one at a time (each image
  decoded by the gateway at the option's size), the options taken in turns over ``--rounds`` rounds, in an order
  rotated from round to round, so that a slow spell of the machine falls on every option alike;
- **triton**: the same option called straight from tritonclient with pixels letterboxed beforehand (the model's own
  time plus the Triton hop, no decoding, no gateway), one call at a time;
- **AP**: the manifest's, from ``anytime eval --sizes`` on the benchmark's val split.

The idle goal (issue "exits across input sizes"): the cheapest option's end-to-end p50 at most half the deepest exit's
at the model's own size, on the benchmark's images.

**Memory**: the proportional set size (PSS, ``/proc/PID/smaps_rollup``) of tritonserver and every python stub, once
each model has served every size it holds (each instance), for this repository and for an export of the same model
at its own size only (``anytime export --sizes SIZE``, in ``OUT/one-size``): the issue's bound is 1.5x.

Writes ``OUT/options.json``, ``OUT/options.md`` and ``OUT/frontier.png`` (``--plots-to docs`` also puts the picture
there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pss_mb(pid: int) -> float:
    """PSS of a process and its children (Triton's python stubs), in MB."""
    pids = [pid] + [int(x) for x in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                   text=True).stdout.split()]
    total_kb = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


def exercised_pss(repository: Path, options, calls: int = 6) -> float:
    """Start Triton on ``repository``, send every option ``calls`` calls two at a time (both instances of each model
    run every size they hold), and return the PSS of tritonserver and its stubs."""
    import concurrent.futures

    import tritonclient.grpc as tc

    from anytime.serving.triton import TritonServer, free_ports

    http, grpc_port, metrics = free_ports(3)
    with TritonServer(repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as triton:
        triton.wait_ready(180)
        client = tc.InferenceServerClient(triton.grpc_url)

        def call(o):
            x = np.random.default_rng(0).integers(0, 256, (1, 3, o.image_size, o.image_size), dtype=np.uint8)
            inp = tc.InferInput("images", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            client.infer(o.model, [inp])

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for o in options:
                list(pool.map(call, [o] * calls))
        time.sleep(1.0)
        return pss_mb(triton.pid)


def idle_end_to_end(address: str, payloads: list[bytes], options: list[str], requests: int, rounds: int,
                    ) -> dict[str, list[float]]:
    """ms per request, on the client's clock, per option: one request at a time, options in turns."""
    import grpc

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc

    out: dict[str, list[float]] = {o: [] for o in options}
    per_round = max(1, requests // rounds)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorStub(channel)
        stub.GetModelInfo(pb.ModelInfoRequest(), timeout=30)
        for r in range(rounds):
            order = options[r % len(options):] + options[:r % len(options)]
            for name in order:
                for i in range(per_round + 2):  # 2 untimed: the option's first calls after another's
                    data = payloads[(r * per_round + i) % len(payloads)]
                    t0 = time.perf_counter()
                    response = stub.Detect(pb.DetectRequest(encoded=data, option=name, budget_ms=10_000), timeout=30)
                    ms = (time.perf_counter() - t0) * 1e3
                    assert f"{response.image_size}/{response.exit}" == name, (name, response.image_size, response.exit)
                    if i >= 2:
                        out[name].append(ms)
    return out


def triton_direct(url: str, payload: bytes, options, runs: int) -> dict[str, list[float]]:
    """ms per call of each option from tritonclient, pixels letterboxed beforehand, one call at a time."""
    import tritonclient.grpc as tc

    from anytime.imaging import letterbox, open_image

    client = tc.InferenceServerClient(url)
    out = {}
    for o in options:
        pixels, _ = letterbox(open_image(payload), o.image_size)
        inp = tc.InferInput("images", [1, *pixels.shape], "UINT8")
        inp.set_data_from_numpy(pixels[None])
        times = []
        for i in range(runs + 3):
            t0 = time.perf_counter()
            client.infer(o.model, [inp])
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
        out[o.name] = times
    return out


def table(result: dict) -> str:
    sets = list(result["end_to_end"])
    head = "| option | GMACs | AP | " + " | ".join(f"{s}: p50 / p95 ms" for s in sets) + " | Triton direct p50 ms |"
    lines = [head, "|" + "---|" * (4 + len(sets))]
    for o in result["options"]:
        cells = [o["name"], f"{o['gmacs']:.3f}", f"{o['ap']:.3f}" if o["ap"] is not None else "-"]
        for s in sets:
            t = result["end_to_end"][s][o["name"]]
            cells.append(f"{np.percentile(t, 50):.1f} / {np.percentile(t, 95):.1f}")
        cells.append(f"{np.percentile(result['triton'][o['name']], 50):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """AP against end-to-end p50 per option (one line per image set), in the spirit of the paper's Figure 9."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    options = [o for o in result["options"] if o["ap"] is not None]
    markers = {128: "v", 256: "o", 384: "^"}
    for n, (s, colour) in enumerate(zip(result["end_to_end"], ("tab:blue", "tab:orange", "tab:green"))):
        xs = [float(np.percentile(result["end_to_end"][s][o["name"]], 50)) for o in options]
        ax.plot(xs, [o["ap"] for o in options], "-", color=colour, alpha=0.4)
        for k, (x, o) in enumerate(zip(xs, options)):
            ax.plot(x, o["ap"], markers.get(o["image_size"], "s"), color=colour)
            if n == 0:  # names once, alternately left and right of the first set's points (they crowd at 128 px)
                ax.annotate(o["name"], (x, o["ap"]), textcoords="offset points", xytext=(6 if k % 2 else -30, -3),
                            fontsize=7)
        ax.plot([], [], "-", color=colour, label=f"{s}: through the gateway, p50")
    xs = [float(np.percentile(result["triton"][o["name"]], 50)) for o in options]
    ax.plot(xs, [o["ap"] for o in options], ":", color="grey", label="Triton direct, pixels ready, p50")
    for size, m in markers.items():
        if any(o["image_size"] == size for o in options):
            ax.plot([], [], m, color="black", label=f"{size} px")
    ax.set_xlabel("idle latency, one request at a time (ms)")
    ax.set_ylabel("AP (benchmark val)")
    ax.set_title("Served options: input size x exit (SIZE/EXIT)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> int:
    from anytime.data import photos

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    photos.add_set_arguments(p)
    p.add_argument("--requests", type=int, default=60, help="timed requests per option and image set")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the memory comparison (two more Triton starts)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/options"))
    p.add_argument("--plots-to", type=Path, default=None)
    args = p.parse_args()

    from anytime.clients.detect import image_bytes
    from anytime.clients.loadgen import open_dataset
    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.export.ensure import ensure_exported
    from anytime.options import from_manifest
    from anytime.export.repository import read_manifest
    from anytime.serving.stack import ServingStack

    ensure_exported(args.repository, DEFAULT_CHECKPOINT, stages=False)
    manifest = read_manifest(args.repository)
    options = from_manifest(manifest)
    names = [o.name for o in options]
    sources = photos.set_sources(args)
    payloads = {}
    for name, src in sources.items():
        ds = open_dataset(src)
        payloads[name] = [image_bytes(ds.image_dir / ds.coco.imgs[i]["file_name"]) for i in ds.ids[:200]]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"options": [o.to_dict() for o in options], "end_to_end": {}, "triton": {}}
    with ServingStack(args.repository, gateway_args=("--execution", "upfront")) as stack:
        for name, data in payloads.items():
            print(f"{name}: {len(names)} options x {args.requests} requests, one at a time", flush=True)
            result["end_to_end"][name] = idle_end_to_end(stack.address, data, names, args.requests, args.rounds)
        result["triton"] = triton_direct(stack.tritons[0].grpc_url, payloads.get("bench", next(iter(
            payloads.values())))[0], options, args.requests)
    default_size = int(manifest["image_size"])
    deepest = max((o for o in options if o.image_size == default_size), key=lambda o: o.exit).name
    goal = {}
    if "bench" in result["end_to_end"]:
        e2e = result["end_to_end"]["bench"]
        p50 = {n: float(np.percentile(t, 50)) for n, t in e2e.items()}
        goal = {"cheapest": names[0], "deepest_at_model_size": deepest, "cheapest_p50_ms": p50[names[0]],
                "deepest_p50_ms": p50[deepest], "ratio": p50[names[0]] / p50[deepest],
                "triton_ratio": float(np.percentile(result["triton"][names[0]], 50)
                                      / np.percentile(result["triton"][deepest], 50))}
    result["idle_goal"] = goal
    result["gmacs_span"] = max(o.gmacs for o in options) / min(o.gmacs for o in options)
    if not args.no_memory:
        one = args.out / "one-size"
        print(f"memory: exporting the model's own size only into {one}", flush=True)
        subprocess.run([sys.executable, "-m", "anytime", "export", "--out", str(one), "--no-stages", "--sizes",
                        str(default_size)], check=True, stdout=subprocess.DEVNULL)
        # both with the progressive model the default export has, or neither: compare like with like
        served = args.out / "all-options"
        subprocess.run([sys.executable, "-m", "anytime", "export", "--out", str(served), "--no-stages"], check=True,
                       stdout=subprocess.DEVNULL)
        result["memory_mb"] = {"all options": exercised_pss(served, options),
                               "model size only": exercised_pss(one, from_manifest(read_manifest(one)))}
        result["memory_ratio"] = result["memory_mb"]["all options"] / result["memory_mb"]["model size only"]
    md = table(result)
    lines = [md, ""]
    if goal:
        lines.append(f"Idle goal (bench): cheapest {goal['cheapest']} p50 {goal['cheapest_p50_ms']:.1f} ms against "
                     f"{goal['deepest_at_model_size']} {goal['deepest_p50_ms']:.1f} ms: ratio {goal['ratio']:.2f} "
                     f"(goal <= 0.5); Triton direct alone: {goal['triton_ratio']:.2f}")
    lines.append(f"Compute span of the served options: {result['gmacs_span']:.1f}x (goal >= 6x)")
    if "memory_mb" in result:
        m = result["memory_mb"]
        lines.append(f"PSS of tritonserver and its stubs: {m['all options']:.0f} MB with every option against "
                     f"{m['model size only']:.0f} MB at the model's size only: {result['memory_ratio']:.2f}x "
                     "(bound 1.5x)")
    text = "\n".join(lines)
    print("\n" + text)
    (args.out / "options.json").write_text(json.dumps(result, indent=1))
    (args.out / "options.md").write_text(text + "\n")
    for folder in [args.out] + ([args.plots_to] if args.plots_to else []):
        print(f"picture: {plot(result, folder / 'frontier.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
