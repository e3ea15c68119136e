"""The Triton repository writer: config.pbtxt contents, atomic version dirs, and the manifest."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from anytime.export import repository
from anytime.export.repository import (
    PROGRESSIVE_MODEL,
    PROGRESSIVE_MODEL_TEMPLATE,
    PYTHON_MODEL_TEMPLATE,
    model_name,
    read_manifest,
    refresh_runners,
    sha256_file,
    write_manifest,
    write_model_dir,
)

S, D = 64, 5


def parse(path: Path) -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    text_format.Parse(path.read_text(), cfg)
    return cfg


def hidden_entries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".")]


def test_python_backend_config(tmp_path, tiny_detector_onnx):
    blob = tiny_detector_onnx(S, D)
    model_dir = write_model_dir(tmp_path, model_name(0), blob, image_size=S, max_detections=D)
    assert model_dir == tmp_path / "anytime_exit0"
    cfg = parse(model_dir / "config.pbtxt")

    assert cfg.name == "anytime_exit0" and cfg.backend == "python" and cfg.platform == ""
    assert cfg.max_batch_size == 8
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", mc.TYPE_UINT8, [3, S, S])
    outs = {o.name: o for o in cfg.output}
    assert (outs["boxes"].data_type, list(outs["boxes"].dims)) == (mc.TYPE_FP32, [D, 4])
    assert (outs["scores"].data_type, list(outs["scores"].dims)) == (mc.TYPE_FP32, [D])
    assert (outs["labels"].data_type, list(outs["labels"].dims)) == (mc.TYPE_INT64, [D])
    nd = outs["num_detections"]
    assert (nd.data_type, list(nd.dims), nd.HasField("reshape"), list(nd.reshape.shape)) == (mc.TYPE_INT64, [1], True, [])
    # batching only of what is already waiting: a lone request is never held back for company
    assert cfg.HasField("dynamic_batching") and list(cfg.dynamic_batching.preferred_batch_size) == []
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    (group,) = cfg.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_CPU)
    assert cfg.parameters["onnx_file"].string_value == "model.onnx"
    assert "intra_op_thread_count" not in cfg.parameters

    assert (model_dir / "1" / "model.onnx").read_bytes() == blob
    assert (model_dir / "1" / "model.py").read_bytes() == PYTHON_MODEL_TEMPLATE.read_bytes()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert hidden_entries(tmp_path) == []


def test_config_matches_the_onnx_graph(tmp_path, tiny_detector_onnx):
    """Names and element types in config.pbtxt are those of the exported graph (the contract)."""
    model_dir = write_model_dir(tmp_path, "m", tiny_detector_onnx(S, D), image_size=S, max_detections=D)
    cfg = parse(model_dir / "config.pbtxt")
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    to_triton = {onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}
    for config_side, graph_side in ((cfg.input, graph.input), (cfg.output, graph.output)):
        want = {v.name: to_triton[v.type.tensor_type.elem_type] for v in graph_side}
        assert {t.name: t.data_type for t in config_side} == want


def test_options_and_path_source(tmp_path, tiny_detector_onnx):
    src = tmp_path / "exit.onnx"
    src.write_bytes(tiny_detector_onnx(S, D))
    repo = tmp_path / "repo"
    model_dir = write_model_dir(
        repo, "anytime_exit2", src, image_size=S, max_detections=D, max_batch_size=16, preferred_batch_sizes=(4, 16),
        max_queue_delay_us=500, instances=2, kind="gpu", intra_op_threads=2, version=3,
    )
    cfg = parse(model_dir / "config.pbtxt")
    assert cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert (cfg.instance_group[0].count, cfg.instance_group[0].kind) == (2, mc.ModelInstanceGroup.KIND_GPU)
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert (model_dir / "3" / "model.onnx").read_bytes() == src.read_bytes()
    assert not (model_dir / "1").exists()


def test_onnxruntime_backend_differs_only_where_it_should(tmp_path, tiny_detector_onnx):
    blob = tiny_detector_onnx(S, D)
    py_dir = write_model_dir(tmp_path / "py", "m", blob, image_size=S, max_detections=D, intra_op_threads=1)
    ort_dir = write_model_dir(tmp_path / "ort", "m", blob, image_size=S, max_detections=D, intra_op_threads=1, backend="onnxruntime")
    py, ort = parse(py_dir / "config.pbtxt"), parse(ort_dir / "config.pbtxt")
    assert (ort.backend, ort.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert "onnx_file" not in ort.parameters
    assert ort.parameters["intra_op_thread_count"].string_value == "1"  # the native backend's own key
    assert sorted(p.name for p in (ort_dir / "1").iterdir()) == ["model.onnx"]
    del py.parameters["onnx_file"]
    for cfg in (py, ort):
        cfg.ClearField("backend")
        cfg.ClearField("platform")
    assert py == ort


def test_rewrite_replaces_the_version(tmp_path, tiny_detector_onnx):
    a, b = tiny_detector_onnx(S, D, seed=1), tiny_detector_onnx(S, D, seed=2)
    write_model_dir(tmp_path, "m", a, image_size=S, max_detections=D, version=2)
    model_dir = write_model_dir(tmp_path, "m", a, image_size=S, max_detections=D)
    model_dir = write_model_dir(tmp_path, "m", b, image_size=S, max_detections=D, max_batch_size=4, preferred_batch_sizes=(2, 4))
    assert (model_dir / "1" / "model.onnx").read_bytes() == b
    assert (model_dir / "2" / "model.onnx").read_bytes() == a  # other versions untouched
    assert parse(model_dir / "config.pbtxt").max_batch_size == 4
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt"]
    assert hidden_entries(tmp_path) == []


def test_an_older_exports_python_runners_are_brought_up_to_this_version(tmp_path, tiny_detector_onnx):
    write_model_dir(tmp_path, model_name(1), tiny_detector_onnx(S, D), image_size=S, max_detections=D)
    old = tmp_path / PROGRESSIVE_MODEL / "1" / "model.py"  # as an older version of the package wrote it
    old.parent.mkdir(parents=True)
    old.write_text("# an older runner\n")
    graph = (tmp_path / model_name(1) / "1" / "model.onnx").read_bytes()
    assert refresh_runners(tmp_path) == [PROGRESSIVE_MODEL]
    assert old.read_bytes() == PROGRESSIVE_MODEL_TEMPLATE.read_bytes()
    assert (tmp_path / model_name(1) / "1" / "model.py").read_bytes() == PYTHON_MODEL_TEMPLATE.read_bytes()
    assert (tmp_path / model_name(1) / "1" / "model.onnx").read_bytes() == graph
    assert refresh_runners(tmp_path) == []


def test_rewrite_without_renameat2_falls_back(tmp_path, tiny_detector_onnx, monkeypatch):
    a, b = tiny_detector_onnx(S, D, seed=1), tiny_detector_onnx(S, D, seed=2)
    write_model_dir(tmp_path, "m", a, image_size=S, max_detections=D)
    monkeypatch.setattr(repository, "_exchange", lambda src, dst: False)
    model_dir = write_model_dir(tmp_path, "m", b, image_size=S, max_detections=D)
    assert (model_dir / "1" / "model.onnx").read_bytes() == b
    assert hidden_entries(tmp_path) == []


def test_readers_never_see_a_missing_or_partial_model(tmp_path, tiny_detector_onnx):
    """While the version is rewritten over and over, every read gets a whole old or whole new file."""
    blobs = [tiny_detector_onnx(S, D, seed=i) for i in (1, 2)]
    model_dir = write_model_dir(tmp_path, "m", blobs[0], image_size=S, max_detections=D)
    target = model_dir / "1" / "model.onnx"
    seen, bad, done = [0], [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError as e:
                bad.append(e)
                return
            if data not in blobs:
                bad.append(len(data))
                return
            seen[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            write_model_dir(tmp_path, "m", blobs[i % 2], image_size=S, max_detections=D)
    finally:
        done.set()
        t.join()
    assert bad == [] and seen[0] > 0
    assert hidden_entries(tmp_path) == []


def test_failed_write_leaves_no_trace(tmp_path, tiny_detector_onnx):
    with pytest.raises(FileNotFoundError):
        write_model_dir(tmp_path, "m", tmp_path / "missing.onnx", image_size=S, max_detections=D)
    assert list(tmp_path.iterdir()) == []
    blob = tiny_detector_onnx(S, D)
    write_model_dir(tmp_path, "m", blob, image_size=S, max_detections=D)
    with pytest.raises(FileNotFoundError):
        write_model_dir(tmp_path, "m", tmp_path / "missing.onnx", image_size=S, max_detections=D)
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == blob
    assert hidden_entries(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backend": "tensorrt"},
        {"kind": "tpu"},
        {"image_size": 0},
        {"max_batch_size": 4, "preferred_batch_sizes": (2, 8)},
        {"instances": 0},
        {"version": 0},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    args = {"image_size": S, "max_detections": D, **kwargs}
    with pytest.raises(ValueError):
        write_model_dir(tmp_path, "m", b"x", **args)
    assert list(tmp_path.iterdir()) == []


def test_manifest_roundtrip(tmp_path, tiny_detector_onnx):
    for k in range(2):
        write_model_dir(tmp_path, model_name(k), tiny_detector_onnx(S, D, seed=k), image_size=S, max_detections=D)
    manifest = {
        "exits": [{"exit": k, "model": model_name(k), "sha256": sha256_file(tmp_path / model_name(k) / "1" / "model.onnx")} for k in range(2)],
        "image_size": S,
        "max_detections": D,
        "class_names": ["cat", "dog"],
        "latency_profile": {"anytime_exit0": {"1": 3.5}},
    }
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / "manifest.json"
    assert read_manifest(tmp_path) == manifest
    write_manifest(tmp_path, {**manifest, "class_names": ["cat"]})
    assert read_manifest(tmp_path)["class_names"] == ["cat"]
    assert hidden_entries(tmp_path) == []
    assert manifest["exits"][0]["sha256"] != manifest["exits"][1]["sha256"]


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        write_manifest(tmp_path, {"exits": [], "max_detections": 5})
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=4096) == hashlib.sha256(data).hexdigest()


def test_the_exit_models_instances_and_threads_are_set_in_place(tmp_path, tiny_detector_onnx):
    """``anytime serve --instances N --intra-op-threads T`` and ``anytime export --intra-op-threads T``: the
    exit models' configs change, their graphs and everything else stay."""
    from anytime.export.repository import configure_exits

    for k in (1, 2):
        write_model_dir(tmp_path, model_name(k), tiny_detector_onnx(S, D), image_size=S, max_detections=D)
    write_manifest(tmp_path, {"exits": [{"exit": k, "model": model_name(k)} for k in (1, 2)], "image_size": S,
                              "max_detections": D, "class_names": ["a"]})
    graph = (tmp_path / model_name(1) / "1" / "model.onnx").read_bytes()
    before = parse(tmp_path / model_name(2) / "config.pbtxt")
    assert configure_exits(tmp_path, instances=2, intra_op_threads=1) == [model_name(1), model_name(2)]
    for k in (1, 2):
        cfg = parse(tmp_path / model_name(k) / "config.pbtxt")
        assert [g.count for g in cfg.instance_group] == [2]
        assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    after = parse(tmp_path / model_name(2) / "config.pbtxt")
    after.instance_group[0].count = before.instance_group[0].count
    del after.parameters["intra_op_thread_count"]
    assert after == before
    assert (tmp_path / model_name(1) / "1" / "model.onnx").read_bytes() == graph
    assert configure_exits(tmp_path, instances=2) == []  # already so: nothing rewritten
    with pytest.raises(ValueError):
        configure_exits(tmp_path, instances=0)
