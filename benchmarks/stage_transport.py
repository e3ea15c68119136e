"""How should stage features travel? One request to the deepest exit of the default model through its stages (every
stage's features graph, then the deepest exit's head), four ways, in one run:

    .venv/bin/python benchmarks/stage_transport.py [--runs 100]

1. ``monolithic``: the deepest exit's own model, one call (the reference: no stages at all);
2. ``in Triton``: the progressive model (``anytime_progressive``): one stream, the graphs chained inside the
   python stub, features in its memory (what the gateway uses);
3. ``gRPC``: each graph its own Triton model, the client chaining them, features sent over the wire each way;
4. ``shared memory``: the same, with every stage's input and output tensors in system shared memory regions
   registered with Triton (``tritonclient.utils.shared_memory``), so only region names cross the wire.

The models for 3 and 4 are the very graphs of the progressive model, served by the generic python-backend
``model.py`` with a config derived from each graph's inputs and outputs. Prints p50/p95 per way, the ratio to
monolithic, and what a call costs beyond its compute in each way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NP_TO_TRITON = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64",
                np.dtype(np.int32): "INT32", np.dtype(np.float64): "FP64"}


def graph_io(onnx_path: Path) -> tuple[list, list]:
    """(inputs, outputs) of a graph as (name, numpy dtype, dims without the batch axis)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    kinds = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(int64)": np.int64}

    def spec(t):
        return t.name, kinds[t.type], [int(d) for d in t.shape[1:]]
    return [spec(t) for t in s.get_inputs()], [spec(t) for t in s.get_outputs()]


def write_stage_models(repo: Path, progressive_dir: Path, files: list[str]) -> None:
    """Each graph ``files[k - 1]`` of the progressive model as a Triton model ``stage{k}`` (generic python
    backend)."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from anytime.export.repository import PYTHON_MODEL_TEMPLATE

    for k, file in enumerate(files, start=1):
        src = progressive_dir / "1" / file
        inputs, outputs = graph_io(src)
        cfg = mc.ModelConfig(name=f"stage{k}", backend="python", max_batch_size=8)
        for name, dtype, dims in inputs:
            cfg.input.add(name=name, data_type=mc.DataType.Value("TYPE_" + NP_TO_TRITON[np.dtype(dtype)]), dims=dims)
        for name, dtype, dims in outputs:
            out = cfg.output.add(name=name, data_type=mc.DataType.Value("TYPE_" + NP_TO_TRITON[np.dtype(dtype)]),
                                 dims=dims or [1])
            if not dims:
                out.reshape.SetInParent()
        cfg.dynamic_batching.SetInParent()
        cfg.parameters["onnx_file"].string_value = "model.onnx"
        (repo / f"stage{k}" / "1").mkdir(parents=True)
        shutil.copyfile(src, repo / f"stage{k}" / "1" / "model.onnx")
        shutil.copyfile(PYTHON_MODEL_TEMPLATE, repo / f"stage{k}" / "1" / "model.py")
        (repo / f"stage{k}" / "config.pbtxt").write_text(text_format.MessageToString(cfg))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()

    import shutil

    import tritonclient.grpc as tc
    import tritonclient.utils.shared_memory as shm

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.export.ensure import ensure_exported
    from anytime.export.repository import read_manifest
    from anytime.serving.triton import TritonServer, free_ports

    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    manifest = read_manifest(args.repository)
    prog = manifest["progressive"]
    chain = [s["features"] for s in prog["stages"]] + [prog["stages"][-1]["head"]]
    k_max = len(chain)
    deepest = manifest["exits"][-1]["model"]
    size = manifest["image_size"]
    work = Path(tempfile.mkdtemp(prefix="anytime-transport-"))
    repo = work / "repo"
    repo.mkdir()
    for name in (deepest, prog["model"]):
        shutil.copytree(args.repository / name, repo / name)
    write_stage_models(repo, repo / prog["model"], chain)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    results = {}

    def timed(fn):
        for _ in range(10):
            fn()
        out = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return np.asarray(out)

    http, grpc_port, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as triton:
        client = tc.InferenceServerClient(triton.grpc_url)

        def infer(model, feeds, outputs=None):
            inputs = []
            for name, array in feeds.items():
                i = tc.InferInput(name, list(array.shape), NP_TO_TRITON[array.dtype])
                i.set_data_from_numpy(array)
                inputs.append(i)
            return client.infer(model, inputs, outputs=outputs)

        results["monolithic"] = timed(lambda: infer(deepest, {"images": pixels}))

        import queue
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(result))
        extra = {"budget_ms": np.array([60_000.0]), "exits": np.array([1, 0], np.int32)}

        def in_triton():
            inputs = []
            for name, array in {"images": pixels, **extra}.items():
                i = tc.InferInput(name, list(array.shape), NP_TO_TRITON[array.dtype])
                i.set_data_from_numpy(array)
                inputs.append(i)
            client.async_stream_infer(prog["model"], inputs)
            while not answers.get(timeout=60).as_numpy("final")[0]:
                pass
        results["in Triton (progressive model)"] = timed(in_triton)
        client.stop_stream()

        io = [graph_io(repo / f"stage{k}" / "1" / "model.onnx") for k in range(1, k_max + 1)]

        def over_grpc():
            feeds = {"images": pixels}
            for k in range(1, k_max + 1):
                result = infer(f"stage{k}", feeds)
                feeds = {n[:-len("_out")]: result.as_numpy(n) for n, _, _ in io[k - 1][1] if n.endswith("_out")}
        results["gRPC (features over the wire)"] = timed(over_grpc)

        # shared memory: one region per stage boundary holding that boundary's tensors back to back
        regions, handles = [], []
        for k in range(1, k_max + 1):
            tensors = [(n, d, [1, *dims]) for n, d, dims in io[k - 1][1]]
            nbytes = sum(int(np.prod(s)) * np.dtype(d).itemsize for _, d, s in tensors)
            name, key = f"out{k}", f"/anytime_{uuid.uuid4().hex[:8]}_{k}"
            handle = shm.create_shared_memory_region(name, key, nbytes)
            client.register_system_shared_memory(name, key, nbytes)
            regions.append((name, tensors))
            handles.append(handle)
        in_name, in_key = "in1", f"/anytime_{uuid.uuid4().hex[:8]}_in"
        in_handle = shm.create_shared_memory_region(in_name, in_key, pixels.nbytes)
        shm.set_shared_memory_region(in_handle, [pixels])
        client.register_system_shared_memory(in_name, in_key, pixels.nbytes)

        def over_shm():
            source = (in_name, [("images", np.uint8, [1, 3, size, size])])
            for k in range(1, k_max + 1):
                inputs, offset = [], 0
                for name, dtype, shape in source[1]:
                    if k > 1 and not name.endswith("_out"):
                        offset += int(np.prod(shape)) * np.dtype(dtype).itemsize
                        continue
                    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    i = tc.InferInput(name[:-len("_out")] if k > 1 else name, shape, NP_TO_TRITON[np.dtype(dtype)])
                    i.set_shared_memory(source[0], nbytes, offset)
                    inputs.append(i)
                    offset += nbytes
                outputs, offset = [], 0
                for name, dtype, shape in regions[k - 1][1]:
                    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    o = tc.InferRequestedOutput(name)
                    o.set_shared_memory(regions[k - 1][0], nbytes, offset)
                    outputs.append(o)
                    offset += nbytes
                client.infer(f"stage{k}", inputs, outputs=outputs)
                source = regions[k - 1]
        results["shared memory (features in shm regions)"] = timed(over_shm)
        client.unregister_system_shared_memory()
        for h in [*handles, in_handle]:
            shm.destroy_shared_memory_region(h)
    shutil.rmtree(work, ignore_errors=True)

    mono = float(np.percentile(results["monolithic"], 50))
    print(f"\nOne request through all {k_max - 1} stages of the default model and exit {k_max - 1}'s head ({k_max} "
          f"graphs), {args.runs} runs each, batch 1, one request at a time")
    print(f"{'way':<44} {'p50 ms':>8} {'p95 ms':>8} {'p50 / monolithic':>17} {'per call beyond monolithic':>28}")
    for name, ms in results.items():
        p50, p95 = np.percentile(ms, 50), np.percentile(ms, 95)
        per_stage = (p50 - mono) / (k_max - 1) if name != "monolithic" else 0.0
        print(f"{name:<44} {p50:>8.2f} {p95:>8.2f} {p50 / mono:>17.2f} {per_stage:>27.2f} ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
