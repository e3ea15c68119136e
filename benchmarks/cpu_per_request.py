"""How much CPU does one request cost each process of the stack (gateway, tritonserver, each python stub, client)?

    .venv/bin/python benchmarks/cpu_per_request.py [--requests 300] [--sets photos,bench] [--clients 1,4]

CPU time (utime + stime from ``/proc/PID/stat``) moves little from run to run, unlike latency percentiles on a
shared 2-core machine, so it decides between designs that budgets met cannot tell apart. Every request asks for
exit 4 (min_exit = max_exit = 4) with a generous budget, so each does the same model work, and the columns differ
only by what the images cost. Rows: one request at a time, and 4 closed-loop clients, for the photo mix
(``anytime data photos``: 300-1000 px, half JPEG, half PNG) and the benchmark's own 224-288 px PNGs. Encoded
images are sent as outside clients send them; ``--client-letterbox`` adds rows where the client letterboxes
first and sends raw pixels (``anytime.clients.detect``'s option), to show what that saves the server.

The floors beside it: ONNX Runtime's own CPU per call of the exit-4 graph in this process, at the thread count
the repository serves with (``intra_op_thread_count``, else the runtime's default), spinning off as served; and
the CPU of decoding and letterboxing each set's images in this process, one thread (what the gateway cannot
spend less than, with this decoder).
Writes runs/bench/cpu_per_request.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), plus cutime + cstime (its children that ended and were waited
    for: a short-lived helper the gateway starts still counts), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def resident_mb(pid: int) -> float:
    """VmRSS of a process, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def process_names(stack) -> dict[str, int]:
    """name -> pid for the gateway, each tritonserver and each of its python stubs (by the model it serves)."""
    names = {"gateway": stack.gateway.pid}
    # every process the gateway started counts as the gateway's (a decoding subprocess would otherwise go unseen)
    todo = children(stack.gateway.pid)
    while todo:
        pid = todo.pop()
        names[f"gateway child {pid}"] = pid
        todo += children(pid)
    for k, t in enumerate(stack.tritons):
        names[f"tritonserver{k or ''}"] = t.pid
        for pid in children(t.pid):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            model = next((c.decode().split("/")[-3] for c in cmd if c.endswith(b"model.py")), None)
            label = f"stub {model}" if model else Path(cmd[0].decode()).name
            names[label if label not in names else f"{label} {pid}"] = pid
    return names


def load_images(data_dir: Path, limit: int) -> list[bytes]:
    from anytime.data.coco import find_split

    image_dir, ann_file = find_split(data_dir, "val")
    infos = json.loads(Path(ann_file).read_text())["images"][:limit]
    return [(Path(image_dir) / i["file_name"]).read_bytes() for i in infos]


MODEL_SIZE = 256  # the repository's own input size, set by main


def run_requests(address: str, images: list[bytes], requests: int, clients: int, exit: int,
                 letterbox_size: int | None) -> dict:
    """``requests`` requests to ``exit`` from ``clients`` closed-loop clients; with ``letterbox_size`` the client
    letterboxes each image first (inside the measured window: it is the client's CPU)."""
    import asyncio

    from anytime.clients.detect import letterboxed_request
    from anytime.clients.loadgen import closed_loop

    payloads = [letterboxed_request(data, letterbox_size)[0] for data in images] if letterbox_size else images
    # the exit at the model's own size: pinned as an option, or the gateway would take the larger size's (it serves
    # every exit but the first at 384 px too) and the rows would not compare with ONNX Runtime's at 256
    option = f"{letterbox_size or MODEL_SIZE}/{exit}" if exit else ""
    return asyncio.run(closed_loop(address, payloads, requests, clients=clients, exits=(exit, exit), option=option))


def measure(stack, address, images, requests, clients, exit, letterbox_size) -> dict:
    pids = process_names(stack)
    run_requests(address, images, min(20, requests), clients, exit, letterbox_size)  # warm
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    client_before = time.process_time()
    out = run_requests(address, images, requests, clients, exit, letterbox_size)
    client = time.process_time() - client_before
    per = {n: (cpu_seconds(p) - before[n]) / requests * 1e3 for n, p in pids.items()}
    per["client"] = client / requests * 1e3
    stubs = sum(v for n, v in per.items() if n.startswith("stub"))
    return {"per_process_ms": per, "stubs_ms": stubs, "stack_ms": sum(v for n, v in per.items() if n != "client"),
            "requests_per_s": requests / out["wall_s"], "errors": sum(out["failures"].values()), "exits": out["exits"],
            "gateway_rss_mb": resident_mb(pids["gateway"])}


def decode_floor(images: list[bytes], size: int) -> float:
    """CPU ms per image of decoding and letterboxing the set in this process, one thread: the gateway's floor."""
    from anytime.imaging import letterbox, open_image

    for data in images[:5]:
        letterbox(open_image(data), size)
    c0 = time.process_time()
    for data in images:
        letterbox(open_image(data), size)
    return (time.process_time() - c0) / len(images) * 1e3


def ort_floor(repository: Path, exit: int, runs: int = 200) -> dict:
    """CPU ms per call of the exit's graph in ONNX Runtime alone, as the repository's runner configures it."""
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from anytime.export.repository import read_manifest

    manifest = read_manifest(repository)
    model = next(e["model"] for e in manifest["exits"] if e["exit"] == exit)
    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
    options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "0"))
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    size = int(manifest["image_size"])
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, size, size), np.uint8)}
    for _ in range(10):
        session.run(None, feed)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    return {"cpu_ms": (time.process_time() - c0) / runs * 1e3, "wall_ms": (time.perf_counter() - t0) / runs * 1e3,
            "threads": options.intra_op_num_threads or "default"}


def _forward(triton_url: str, model: str, size: int, port_out) -> None:
    """In a process of its own: the least a Python gateway with these libraries can do per request. It accepts
    ``Detect`` on grpc.aio, sends a fixed, already letterboxed image to ``model`` through tritonclient's asyncio
    client, and answers with an empty response: no decoding, no scheduling, no detections to convert. Its CPU per
    request is the hop's floor (two RPCs through Python), which the gateway's "decode floor + 2 ms" goal must fit."""
    import asyncio

    import grpc
    import tritonclient.grpc.aio as triton_aio

    from anytime.serving.api import anytime_pb2 as pb
    from anytime.serving.api import anytime_pb2_grpc as pb_grpc
    from anytime.serving.measure import infer_exit

    pixels = np.zeros((1, 3, size, size), np.uint8)

    class Forwarder(pb_grpc.DetectorServicer):
        async def Detect(self, request, context):
            await infer_exit(self.client, model, pixels)
            return pb.DetectResponse(exit=0)

    async def serve():
        forwarder = Forwarder()
        forwarder.client = triton_aio.InferenceServerClient(triton_url)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        pb_grpc.add_DetectorServicer_to_server(forwarder, server)
        port_out.send(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def hop_floor(triton_url: str, model: str, size: int, images: list[bytes], requests: int, clients: int) -> float:
    """CPU ms per request of the minimal forwarder (``_forward``), the same encoded images sent to it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forward, args=(triton_url, model, size, send), daemon=True)
    proc.start()
    try:
        address = f"127.0.0.1:{receive.recv()}"
        run_requests(address, images, min(20, requests), clients, 0, None)  # warm
        before = cpu_seconds(proc.pid)
        run_requests(address, images, requests, clients, 0, None)
        return (cpu_seconds(proc.pid) - before) / requests * 1e3
    finally:
        proc.terminate()
        proc.join(5)


def main() -> int:
    from anytime.data import photos

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    photos.add_set_arguments(p)
    p.add_argument("--clients", default="1,4")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--exit", type=int, default=4)
    p.add_argument("--client-letterbox", action="store_true", help="also rows with raw, letterboxed pixels")
    p.add_argument("--gateway-args", default="", help="extra `anytime serve` flags, space separated")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = p.parse_args()

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.export.ensure import ensure_exported
    from anytime.export.repository import read_manifest
    from anytime.serving.stack import ServingStack

    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    sets = {name: load_images(source, 200 if name == "bench" else 10_000)
            for name, source in photos.set_sources(args).items()}
    size = int(read_manifest(args.repository)["image_size"])
    global MODEL_SIZE
    MODEL_SIZE = size
    rows = []
    model = next(e["model"] for e in read_manifest(args.repository)["exits"] if e["exit"] == args.exit)
    hop = {}
    with ServingStack(args.repository, gateway_args=tuple(args.gateway_args.split())) as stack:
        for name in sets:
            for clients in (int(c) for c in args.clients.split(",")):
                hop[f"{name} {clients}"] = hop_floor(stack.tritons[0].grpc_url, model, size, sets[name], args.requests,
                                                     clients)
                print(f"{name:7s} {clients} client(s) minimal forwarder (the hop's floor) "
                      f"{hop[f'{name} {clients}']:5.1f} CPU ms/request", flush=True)
            for clients in (int(c) for c in args.clients.split(",")):
                for lb in ([None, size] if args.client_letterbox else [None]):
                    r = measure(stack, stack.address, sets[name], args.requests, clients, args.exit, lb)
                    r.update(set=name, clients=clients, sent="raw letterboxed" if lb else "encoded")
                    rows.append(r)
                    print(f"{name:7s} {clients} client(s) {r['sent']:16s} gateway {r['per_process_ms']['gateway']:5.1f} "
                          f"stubs {r['stubs_ms']:5.1f} stack {r['stack_ms']:5.1f} client "
                          f"{r['per_process_ms']['client']:4.1f} ms/request; {r['requests_per_s']:.1f}/s, "
                          f"{r['errors']} errors, exits {r['exits']}; gateway resident {r['gateway_rss_mb']:.0f} MB",
                          flush=True)
    floor = ort_floor(args.repository, args.exit)
    decoding = {name: decode_floor(images, size) for name, images in sets.items()}
    names = sorted({n for r in rows for n in r["per_process_ms"]}, key=lambda n: (n.startswith("stub"), n))
    print(f"\nCPU ms per request at exit {args.exit}, {args.requests} requests a row (utime + stime from /proc)\n")
    print("| set | clients | sent | " + " | ".join(names) + " | stack | requests/s | gateway MB |")
    print("|---|---|---|" + "---|" * len(names) + "---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r['per_process_ms'].get(n, 0.0):.1f}" for n in names)
        print(f"| {r['set']} | {r['clients']} | {r['sent']} | {cells} | {r['stack_ms']:.1f} | {r['requests_per_s']:.1f} | "
              f"{r['gateway_rss_mb']:.0f} |")
    print(f"\nfloor: ONNX Runtime alone, exit {args.exit} graph, {floor['threads']} intra-op threads: "
          f"{floor['cpu_ms']:.1f} CPU ms ({floor['wall_ms']:.1f} ms wall) per call; decoding + letterbox alone, one "
          "thread: " + ", ".join(f"{name} {ms:.1f}" for name, ms in decoding.items()) + " CPU ms per image")
    print("floor of the hop: a minimal Python forwarder (grpc.aio in, tritonclient.aio out, no decoding, no "
          "scheduling), CPU ms per request: " + ", ".join(f"{k} client(s) {v:.1f}" for k, v in hop.items()))
    print("\ngoals against floors (gateway <= decode + 2 ms; stack <= 1.2 x (ONNX Runtime + decode)):")
    for r in rows:
        if r["sent"] != "encoded":
            continue
        dec, hop_ms = decoding[r["set"]], hop.get(f"{r['set']} {r['clients']}", float("nan"))
        print(f"  {r['set']} {r['clients']} client(s): gateway {r['per_process_ms']['gateway']:.1f} (goal {dec + 2:.1f}, "
              f"floor decode + hop {dec + hop_ms:.1f}); stack {r['stack_ms']:.1f} (goal "
              f"{1.2 * (floor['cpu_ms'] + dec):.1f}, {r['stack_ms'] / (floor['cpu_ms'] + dec):.2f}x the floors)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_per_request.json").write_text(json.dumps({"rows": rows, "floor": floor, "decoding": decoding,
                                                               "hop_floor_ms": hop},
                                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
