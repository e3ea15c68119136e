"""Does the gateway meet as many budgets, and earn as much accuracy in time, as the simplest ways to serve without it?

    .venv/bin/python benchmarks/peers.py [--sets photos,bench] [--reps 3] [--requests 300]
                                         [--variant LABEL:FLAGS ...] [--baseline DIR] [--out runs/bench/peers]

The serving verdict (issue "The scheduler earns its place"), through the real gateway and the real Triton, on the
client's clock:

- **Set-up.** One repository, one Triton process for the whole run. The gateway starts once per repetition with
  its default flags (plus each ``--variant``'s flags, reported apart; ``--baseline`` runs another checkout's
  gateway), in front of that Triton. Nothing in Triton tells the gateway's calls from a plain client's.
- **Peers** (``anytime.clients.direct``): exit k direct for every exit (at the model's own size), slack direct,
  the cheapest option direct (``cheapest``: the smallest input size's cheapest exit) and slack over all options
  (``slack-opt``), decoding with the project's ``open_image`` + ``letterbox`` in 2 threads, each request its own
  task, ``client_timeout`` = the time left; slack direct measures each exit's idle p95 (12 calls after 5 warm-ups)
  before each row, slack over options each option's idle p95 of decoding and calling.
- **T and D** per repetition on exit 4 direct: T with 4 closed-loop clients, D the p50 of 20 idle requests one at a
  time, decoding included. No change to the gateway moves a row's rate or budget.
- **The same trace**: per row and repetition every way gets the same images, arrival offsets and budgets
  (``loadgen.plan_trace``), each request's clock starting at its planned arrival.
- **Rows** per image set: 50 % of T at 3D, 80 % at 3D, 50 % at 1.5D, 50 % at 2D with a busy loop on one core, and
  150 % at 3D (overload). Within a repetition the ways run each row back to back, in an order rotated across
  repetitions.
- **Measures**: met (OK within budget over all sent), refused at once (an error within 10 ms), late (the rest not
  met), admitted in time, utility (mean over all sent of the answering option's AP when met, else 0; AP per
  option from the manifest, which ``anytime export`` writes), COCO AP at budget, options used.
- **Verdict**: per row, the median over repetitions of (gateway - best peer), for met and for utility separately,
  with their spread; goals: met >= -0.5 points, utility >= 0, admitted in time >= 99.5 % (except overload).

Writes ``OUT/peers.json``, the table ``OUT/peers.md`` and a picture per image set ``OUT/peers-{set}.png``
(``--plots-to docs`` puts the pictures there too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_goals import _pythonpath, neighbour  # noqa: E402  (benchmarks/ is not a package)

from anytime.options import from_manifest, option_name  # noqa: E402

# (load as a share of T, budget in units of D, one core busy)
ROWS = ((0.5, 3.0, False), (0.8, 3.0, False), (0.5, 1.5, False), (0.5, 2.0, True), (1.5, 3.0, False))
GATEWAY = "gateway"


def row_label(load: float, k: float, busy: bool) -> str:
    return f"{100 * load:.0f} %, {k:g}D{', one core busy' if busy else ''}"


async def measure_t_and_d(client, payloads: list[bytes], requests: int = 160, warm: int = 20) -> tuple[float, float]:
    """Exit 4 direct (the deepest exit): closed-loop throughput with 4 clients, and the idle p50 end to end (ms)."""
    deepest = client.exits[-1]

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        pixels, _, _ = await client.decode(payloads[i % len(payloads)])
        await client.infer(deepest, pixels)
        return time.perf_counter() - t0

    async def closed(n: int, clients: int) -> float:
        counter = iter(range(n))

        async def worker():
            for i in counter:
                await one(i)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return n / (time.perf_counter() - t0)

    await closed(warm, 4)
    t = await closed(requests, 4)
    d = float(np.median([await one(i) for i in range(20)])) * 1e3
    return t, d


async def run_way(way: str, records, payloads, triton_url: str, manifest: dict, gateway_address: str | None) -> dict:
    """One way of serving over one planned trace; returns what it needs beyond the records (slack's p95s)."""
    from anytime.clients.direct import DirectClient, gateway_sender, run_trace

    extra = {}
    if gateway_address is not None:  # the gateway, a variant of it, or the baseline checkout's
        from anytime.clients.detect import open_channel
        from anytime.serving.api import anytime_pb2 as pb
        from anytime.serving.api import anytime_pb2_grpc as pb_grpc

        async with open_channel(gateway_address, aio=True) as channel:
            stub = pb_grpc.DetectorStub(channel)
            await stub.GetModelInfo(pb.ModelInfoRequest(), timeout=30.0)  # connected before the clock starts
            extra["wall_s"] = await run_trace(records, gateway_sender(stub, payloads))
        return extra
    client = DirectClient(triton_url, manifest)
    try:
        pixels, _, _ = client.prepare(payloads[0])
        await client.infer(client.exits[0], pixels, timeout=30.0)  # connected before the clock starts
        if way == "slack":
            p95 = await client.idle_p95(pixels)
            extra["p95_ms"] = {str(e): v * 1e3 for e, v in p95.items()}
            send = client.sender(payloads, p95=p95)
        elif way == "slack-opt":
            p95 = await client.idle_p95_options(payloads[0])
            extra["p95_ms"] = {name: v * 1e3 for name, v in p95.items()}
            send = client.sender(payloads, option_p95=p95)
        elif way == "cheapest":
            send = client.sender(payloads, option=next(iter(client.options)))
        else:
            send = client.sender(payloads, exit=int(way.removeprefix("exit")))
        extra["wall_s"] = await run_trace(records, send)
    finally:
        await client.close()
    return extra


def run_way_again_after_an_outage(triton, way, records, payloads, manifest, address) -> dict:
    """``run_way`` once Triton is ready; a way whose set-up (warm-up, slack's idle p95s) met a Triton restart
    starts again on fresh records (the requests it sent so far are dropped: it runs the whole trace anew)."""
    from anytime.clients.loadgen import RequestRecord

    for attempt in range(3):
        triton.wait_ready(120)
        fresh = [RequestRecord(r.image_id, r.budget_ms, r.arrival_s) for r in records]
        try:
            extra = asyncio.run(run_way(way, fresh, payloads, triton.grpc_url, manifest, address))
        except Exception as e:  # tritonclient's or grpc's error of a server that went away mid-set-up
            print(f"    ({way}: {type(e).__name__} before its trace ran, Triton restarts so far {triton.restarts}; "
                  "again)", flush=True)
            continue
        records[:] = fresh
        return extra
    raise RuntimeError(f"{way}: Triton kept failing ({triton.restarts} restarts)")


def measures(records, coco, ap: dict[str, float], default_size: int) -> dict:
    from anytime.clients.loadgen import REFUSED_AT_ONCE_MS
    from anytime.eval.coco_eval import coco_metrics

    n = len(records)
    met = [r for r in records if r.status == "OK" and r.budget_met]
    refused = sum(1 for r in records if r.status != "OK" and r.elapsed_ms is not None
                  and r.elapsed_ms <= REFUSED_AT_ONCE_MS)
    statuses: dict[str, int] = {}
    for r in records:
        key = r.status if r.status != "OK" else ("OK in time" if r.budget_met else "OK late")
        statuses[key] = statuses.get(key, 0) + 1
    def option(r) -> str:
        return option_name(r.image_size or default_size, r.exit)

    exits: dict[str, int] = {}
    for r in met:
        exits[option(r)] = exits.get(option(r), 0) + 1
    coco_ap = coco_metrics(coco, [d for r in met for d in r.detections], [r.image_id for r in records])["AP"]
    examples: dict[str, list[str]] = {}
    for r in records:
        if r.status != "OK" and len(examples.setdefault(r.status, [])) < 3:
            examples[r.status].append(r.error[:160])
    return {"sent": n, "met": len(met) / n, "examples": examples, "refused_at_once": refused, "late": n - len(met) - refused,
            "admitted_in_time": len(met) / (n - refused) if n > refused else None,
            "late_of_admitted": sum(1 for r in records if r.status == "OK" and not r.budget_met) / max(n - refused, 1),
            "utility": sum(ap[option(r)] for r in met) / n, "coco_ap": coco_ap, "exits_met": exits, "statuses": statuses}


def verdict(results: list[dict], ways: list[str], peers: list[str], reps: int) -> list[dict]:
    """Per (set, row) and gateway way: medians over repetitions of the way's measures and of (way - best peer)."""
    out = []
    keys = sorted({(r["set"], r["load"], r["k"], r["busy"]) for r in results}, key=lambda k: (k[0], k[3], k[1], -k[2]))
    for key in keys:
        mine = [r for r in results if (r["set"], r["load"], r["k"], r["busy"]) == key]
        row = {"set": key[0], "load": key[1], "k": key[2], "busy": key[3], "ways": {}, "vs_best_peer": {}}
        for way in ways:
            per = [r for r in mine if r["way"] == way]
            row["ways"][way] = {m: statistics.median(x[m] for x in per if x[m] is not None)
                                if any(x[m] is not None for x in per) else None
                                for m in ("met", "utility", "coco_ap", "admitted_in_time", "refused_at_once", "late",
                                          "late_of_admitted")}
            exits: dict[str, int] = {}
            for x in per:
                for e, c in x["exits_met"].items():
                    exits[e] = exits.get(e, 0) + c
            row["ways"][way]["exits_met"] = exits
        for way in [w for w in ways if w not in peers]:
            diffs = {"met": [], "utility": []}
            for rep in range(reps):
                at = {r["way"]: r for r in mine if r["rep"] == rep}
                if way not in at or not all(p in at for p in peers):
                    continue
                for m in diffs:
                    diffs[m].append(at[way][m] - max(at[p][m] for p in peers))
            row["vs_best_peer"][way] = {m: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                                        for m, v in diffs.items() if v}
        out.append(row)
    return out


def table(rows: list[dict], ways: list[str], peers: list[str], header: dict) -> str:
    gateways = [w for w in ways if w not in peers]
    lines = [f"Medians of {header['reps']} repetitions; cell: met % / utility (exits of the answers in time for the "
             "gateway). 'vs best peer': the median over repetitions of (gateway - the best peer for that measure), "
             "met in points / utility, [min, max].", ""]
    for s in sorted({r["set"] for r in rows}):
        td = header["T_D"][s]
        lines.append(f"**{s}**: T {', '.join(f'{t:.1f}' for t, _ in td)} requests/s, D "
                     f"{', '.join(f'{d:.1f}' for _, d in td)} ms (per repetition, exit 4 direct)")
        lines.append("")
        lines.append("| load, budget | " + " | ".join(ways) + " | " + " | ".join(f"{g} vs best peer" for g in gateways)
                     + " | " + " | ".join(f"{g}: admitted in time / refused at once / late" for g in gateways) + " |")
        lines.append("|---|" + "---|" * (len(ways) + 2 * len(gateways)))
        for r in [r for r in rows if r["set"] == s]:
            cells = []
            for w in ways:
                m = r["ways"][w]
                cell = f"{100 * m['met']:.1f} / {m['utility']:.3f}"
                if w in gateways:
                    cell += " (" + " ".join(f"{e}:{c}" for e, c in sorted(m["exits_met"].items())) + ")"
                cells.append(cell)
            for g in gateways:
                v = r["vs_best_peer"].get(g, {})
                if v:
                    cells.append(f"{100 * v['met']['median']:+.1f} [{100 * v['met']['min']:+.1f}, "
                                 f"{100 * v['met']['max']:+.1f}] / {v['utility']['median']:+.3f} "
                                 f"[{v['utility']['min']:+.3f}, {v['utility']['max']:+.3f}]")
                else:
                    cells.append("-")
            for g in gateways:
                m = r["ways"][g]
                ait = "-" if m["admitted_in_time"] is None else f"{100 * m['admitted_in_time']:.1f} %"
                cells.append(f"{ait} / {m['refused_at_once']:.0f} / {m['late']:.0f}")
            lines.append(f"| {row_label(r['load'], r['k'], r['busy'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def compact(rows: list[dict], ways: list[str], peers: list[str]) -> str:
    """The verdict in one table (the README's): per row, each gateway way's met % / utility, the best peer for
    each measure, and the median difference."""
    gateways = [w for w in ways if w not in peers]
    lines = ["| images | load, budget | " + " | ".join(f"{g}: met / utility" for g in gateways)
             + " | best peer: met | best peer: utility | " + " | ".join(f"{g} - best peer" for g in gateways) + " |",
             "|---|---|" + "---|" * (2 * len(gateways) + 2)]
    for r in rows:
        w = r["ways"]
        best_met = max(peers, key=lambda p: w[p]["met"])
        best_u = max(peers, key=lambda p: w[p]["utility"])
        cells = [f"{100 * w[g]['met']:.1f} / {w[g]['utility']:.3f}" for g in gateways]
        cells += [f"{100 * w[best_met]['met']:.1f} ({best_met})", f"{w[best_u]['utility']:.3f} ({best_u})"]
        for g in gateways:
            v = r["vs_best_peer"].get(g)
            cells.append(f"{100 * v['met']['median']:+.1f} / {v['utility']['median']:+.3f}" if v else "-")
        lines.append(f"| {r['set']} | {row_label(r['load'], r['k'], r['busy'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], ways: list[str], peers: list[str], image_set: str, path: Path) -> Path:
    """Met against utility, one point per way per row, the peers' frontier (their Pareto-best points) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["set"] == image_set]
    fig, axes = plt.subplots(1, len(mine), figsize=(3.6 * len(mine), 3.8), layout="constrained", squeeze=False)
    colours = {w: plt.cm.tab10(i) for i, w in enumerate(ways)}
    for ax, r in zip(axes[0], mine):
        points = {w: (100 * r["ways"][w]["met"], r["ways"][w]["utility"]) for w in ways}
        frontier = sorted(p for w, p in points.items() if w in peers and not any(
            q[0] >= p[0] and q[1] >= p[1] and q != p for v, q in points.items() if v in peers))
        if frontier:
            xs, ys = zip(*frontier)
            ax.plot(xs, ys, "--", color="grey", lw=1, label="peers' frontier")
        for w, (x, y) in points.items():
            ax.scatter([x], [y], color=colours[w], marker="o" if w in peers else "*", s=40 if w in peers else 140,
                       label=w, zorder=3)
        ax.set_title(row_label(r["load"], r["k"], r["busy"]), fontsize=9)
        ax.set_xlabel("budgets met (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("utility (mean AP in time)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), fontsize=8)
    fig.suptitle(f"The gateway against its peers: {image_set} (medians over repetitions)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    from anytime.data import photos

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    photos.add_set_arguments(p)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rows", default=None, help="LOAD:K[:busy] triples, comma-separated (default: the five rows)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:SERVE FLAGS",
                   help="also a gateway with these `anytime serve` flags, reported apart (repeatable)")
    p.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                   help="also the gateway of another checkout (a git worktree of an older commit), as 'baseline'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/peers"))
    p.add_argument("--plots-to", type=Path, default=None, help="also write the pictures into this folder (docs)")
    args = p.parse_args()

    from anytime.clients.detect import image_bytes
    from anytime.clients.loadgen import open_dataset, plan_trace
    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.export.accuracy import manifest_ap
    from anytime.export.ensure import ensure_exported
    from anytime.export.repository import read_manifest
    from anytime.serving.stack import ServingStack
    from anytime.serving.triton import TritonServer, free_ports

    ensure_exported(args.repository, DEFAULT_CHECKPOINT, stages=False)
    manifest = read_manifest(args.repository)
    ap = {o.name: o.ap for o in from_manifest(manifest)} if manifest_ap(manifest) is not None else None
    if ap is None:
        print(f"{args.repository}/manifest.json has no AP per exit: evaluate the checkpoint (anytime eval "
              "--checkpoint ...) and export it again (anytime export)", file=sys.stderr)
        return 2
    rows = ROWS if args.rows is None else [
        (float(a), float(b), bool(c)) for a, b, *c in (t.split(":") for t in args.rows.split(","))]
    peers = [f"exit{e['exit']}" for e in manifest["exits"]] + ["slack", "cheapest", "slack-opt"]
    gateways = {GATEWAY: ()} | {v.split(":", 1)[0]: tuple(v.split(":", 1)[1].split()) for v in args.variant}
    if args.baseline:
        gateways["baseline"] = ()
    ways = list(gateways) + peers
    sources = photos.set_sources(args)
    datasets = {name: open_dataset(src) for name, src in sources.items()}
    payloads = {name: {i: image_bytes(ds.image_dir / ds.coco.imgs[i]["file_name"]) for i in ds.ids}
                for name, ds in datasets.items()}
    results, t_d = [], {name: [] for name in datasets}
    http, grpc_port, metrics = free_ports(3)
    # supervised, as `anytime serve` runs it: a Triton that dies or hangs is restarted within seconds (the run says
    # how often: each restart is an outage every way of serving in that row met)
    triton = TritonServer(args.repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics, restart=True)
    triton.start()
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "peers.partial.json"
    try:
        triton.wait_ready(120)
        for rep in range(args.reps):
            stacks = {}
            for label, flags in gateways.items():
                stack = ServingStack(args.repository, gateway_args=flags)
                stack.tritons = [triton]  # in front of the one Triton, which it never stops (stop_gateway only)
                with _pythonpath(args.baseline if label == "baseline" else None):
                    stack.start_gateway()
                stacks[label] = stack
            try:
                order = ways[rep % len(ways):] + ways[:rep % len(ways)]
                for name, ds in datasets.items():
                    triton.wait_ready(120)
                    t, d = asyncio.run(t_and_d(triton.grpc_url, manifest, list(payloads[name].values())))
                    t_d[name].append((t, d))
                    print(f"\nrepetition {rep + 1}/{args.reps}, {name}: T {t:.1f} requests/s, D {d:.1f} ms "
                          f"(exit 4 direct)", flush=True)
                    for i, (load, k, busy) in enumerate(rows):
                        n = min(args.requests, len(ds))
                        with neighbour(busy):
                            for way in order:
                                records = plan_trace(ds.ids, k * d, load * t, n, seed=args.seed + 1000 * rep + i)
                                per_request = [payloads[name][r.image_id] for r in records]
                                address = stacks[way].address if way in stacks else None
                                extra = run_way_again_after_an_outage(triton, way, records, per_request, manifest,
                                                                      address)
                                restarts = triton.restarts
                                m = measures(records, ds.coco, ap, int(manifest["image_size"]))
                                m.update(set=name, rep=rep, way=way, load=load, k=k, busy=busy, T=t, D=d,
                                         triton_restarts=restarts, **extra)
                                results.append(m)
                                partial.write_text(json.dumps({"runs": results}))  # a crash keeps what ran
                                print(f"  {row_label(load, k, busy):24s} {way:9s} met {100 * m['met']:5.1f} %  "
                                      f"utility {m['utility']:.3f}  refused at once {m['refused_at_once']:3d}  "
                                      f"late {m['late']:3d}  exits {m['exits_met']}  {m['statuses']}", flush=True)
            finally:
                for stack in stacks.values():
                    stack.stop_gateway()
    except Exception as e:  # report what ran: a verdict over fewer repetitions beats none
        print(f"\nstopped early: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr, flush=True)
    finally:
        triton.stop()
    rows_out = verdict(results, ways, peers, args.reps)
    header = {"reps": args.reps, "T_D": t_d, "triton_restarts": triton.restarts, "requests": args.requests, "ap": ap,
              "minutes": (time.time() - started) / 60}
    md = table(rows_out, ways, peers, header)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps({"header": header, "rows": rows_out, "runs": results}, indent=1))
    short = compact(rows_out, ways, peers)
    print("\n" + short)
    (args.out / "peers.md").write_text(md + "\n\n" + short + "\n")
    for name in datasets:
        for folder in [args.out] + ([args.plots_to] if args.plots_to else []):
            print(f"picture: {plot(rows_out, ways, peers, name, folder / f'peers-{name}.png')}")
    return 0


async def t_and_d(url: str, manifest: dict, payloads: list[bytes]) -> tuple[float, float]:
    from anytime.clients.direct import DirectClient

    client = DirectClient(url, manifest)
    try:
        return await measure_t_and_d(client, payloads)
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(main())
