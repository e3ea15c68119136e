"""Writes the Triton model repository around exported ONNX files, plus the repository manifest.

Layout::

    <repo>/manifest.json
    <repo>/anytime_exit{k}/config.pbtxt              one model per exit (upfront execution, single calls)
    <repo>/anytime_exit{k}/1/model.onnx
    <repo>/anytime_exit{k}/1/model_{size}.onnx       (python backend) exit k at another input size, when served
    <repo>/anytime_exit{k}/1/model.py                (python backend only: the ONNX Runtime runner)
    <repo>/anytime_progressive/config.pbtxt          the stages of progressive execution, in one decoupled model
    <repo>/anytime_progressive/1/features{k}.onnx    stage k's pyramid features (stage 1: from the pixels)
    <repo>/anytime_progressive/1/head{k}.onnx        exit k's head and NMS, on stage k's features
    <repo>/anytime_progressive/1/model.py

Everything is written atomically: files go to a hidden temporary name inside the repository (Triton skips
names starting with ".") and are renamed into place, so a running Triton never loads half a model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anytime.files import atomic_write, read_json

INPUT_NAME = "images"
# (name, Triton data type, dims without the batch axis as a function of max_detections)
OUTPUTS = (
    ("boxes", "TYPE_FP32", lambda d: [d, 4]),
    ("scores", "TYPE_FP32", lambda d: [d]),
    ("labels", "TYPE_INT64", lambda d: [d]),
    ("num_detections", "TYPE_INT64", lambda d: []),
)
BACKENDS = ("python", "onnxruntime")
KINDS = ("cpu", "gpu")
MANIFEST_NAME = "manifest.json"
ONNX_FILE = "model.onnx"
PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("triton_python_model.py")
PROGRESSIVE_MODEL_TEMPLATE = Path(__file__).with_name("triton_progressive_model.py")
PROGRESSIVE_MODEL = "anytime_progressive"
MANIFEST_REQUIRED = ("exits", "image_size", "max_detections")


def sized_onnx_file(size: int) -> str:
    """The graph of an exit at an input size other than the model's own, beside ``model.onnx``."""
    return f"model_{int(size)}.onnx"


def model_name(exit: int) -> str:
    """The Triton model name of exit ``exit``; clients and the export agree through this one function."""
    return f"anytime_exit{exit}"


@dataclass(frozen=True)
class TritonModelConfig:
    """What goes into one exit's ``config.pbtxt``; ``to_pbtxt`` renders it."""

    name: str
    image_size: int
    max_detections: int
    backend: str = "python"  # "python" (ONNX Runtime inside model.py) or "onnxruntime" (Triton's native backend)
    max_batch_size: int = 8
    # No preferred sizes and no queue delay: Triton batches the requests already waiting when an instance
    # frees, and never holds one back for company (with one call in flight, 2/4/8 at 2000 us cost every
    # request about 2 ms for nothing).
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    instances: int = 1
    kind: str = "cpu"  # instance_group kind: "cpu" or "gpu"
    intra_op_threads: int | None = None  # ONNX Runtime intra-op threads per instance; None = runtime default
    # Input sizes served beside ``image_size`` (python backend): one graph per size in the version directory, and the
    # input's height and width are then -1 (any), the runner picking the graph by the request's size. Requests of
    # different sizes are never batched together (Triton's dynamic batcher batches equal shapes only).
    other_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for field in ("image_size", "max_detections", "max_batch_size", "instances"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)!r}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us!r}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size={self.max_batch_size}")
        if self.intra_op_threads is not None and self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads!r}")
        if self.other_sizes and self.backend != "python":
            raise ValueError("several input sizes per model need the python backend")
        if any(int(s) < 1 or int(s) == self.image_size for s in self.other_sizes):
            raise ValueError(f"other sizes must be positive and differ from {self.image_size}: {self.other_sizes}")

    def parameters(self) -> dict[str, str]:
        params = {}
        if self.backend == "python":
            params["onnx_file"] = ONNX_FILE
        if self.other_sizes:  # "256:model.onnx,128:model_128.onnx": the runner's graph per input size
            params["onnx_sizes"] = ",".join([f"{self.image_size}:{ONNX_FILE}"] + [
                f"{s}:{sized_onnx_file(s)}" for s in sorted(self.other_sizes)])
        if self.intra_op_threads is not None:
            # the same key Triton's native onnxruntime backend reads, so both backends honour it
            params["intra_op_thread_count"] = str(self.intra_op_threads)
        return params

    def message(self):
        """The config as Triton's own ``ModelConfig`` protobuf message."""
        from tritonclient.grpc import model_config_pb2 as mc

        cfg = mc.ModelConfig(name=self.name, backend=self.backend, max_batch_size=self.max_batch_size)
        if self.backend == "onnxruntime":
            cfg.platform = "onnxruntime_onnx"
        side = -1 if self.other_sizes else self.image_size
        cfg.input.add(name=INPUT_NAME, data_type=mc.TYPE_UINT8, dims=[3, side, side])
        for name, dtype, dims in OUTPUTS:
            shape = dims(self.max_detections)
            out = cfg.output.add(name=name, data_type=mc.DataType.Value(dtype), dims=shape or [1])
            if not shape:  # one value per image: Triton needs non-empty dims, reshaped away
                out.reshape.SetInParent()
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.preferred_batch_size.extend(self.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        kind = mc.ModelInstanceGroup.KIND_GPU if self.kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        cfg.instance_group.add(count=self.instances, kind=kind)
        for key, value in self.parameters().items():
            cfg.parameters[key].string_value = value
        return cfg

    def to_pbtxt(self) -> str:
        """``config.pbtxt``: the message in protobuf's text format, as Triton reads it."""
        from google.protobuf import text_format

        return text_format.MessageToString(self.message())


def write_model_dir(
    repo: str | Path,
    name: str,
    onnx_path_or_bytes: str | Path | bytes,
    *,
    image_size: int,
    max_detections: int,
    backend: str = "python",
    max_batch_size: int = 8,
    preferred_batch_sizes: tuple[int, ...] = (),
    max_queue_delay_us: int = 0,
    instances: int = 1,
    kind: str = "cpu",
    intra_op_threads: int | None = None,
    version: int = 1,
    other_sizes: dict[int, str | Path | bytes] | None = None,
) -> Path:
    """Write (or replace) model ``name`` version ``version`` in ``repo``; returns the model directory.
    ``other_sizes``: {input size: its ONNX graph} served beside ``image_size`` (``TritonModelConfig.other_sizes``).

    A new model directory appears in one rename (config and version together); an existing one gets its
    version directory swapped in atomically, then its config.pbtxt replaced atomically.
    """
    config = TritonModelConfig(
        name=name,
        image_size=image_size,
        max_detections=max_detections,
        backend=backend,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
        intra_op_threads=intra_op_threads,
        other_sizes=tuple(sorted(other_sizes or {})),
    )
    files = {ONNX_FILE: onnx_path_or_bytes}
    files.update({sized_onnx_file(size): data for size, data in (other_sizes or {}).items()})
    if backend == "python":
        files["model.py"] = PYTHON_MODEL_TEMPLATE
    return _write_model(repo, name, version, config.to_pbtxt(), files)


@dataclass(frozen=True)
class ProgressiveModelConfig:
    """``config.pbtxt`` of the progressive model: a decoupled python model that runs the stages' features graphs
    in turn, the head graph of each exit a request wants, and sends each exit's detections as its own response
    (``anytime.export.triton_progressive_model``)."""

    name: str
    image_size: int
    max_detections: int
    num_stages: int
    levels: tuple[int, ...]
    max_stage_batch: int = 8  # requests one stage call may batch (1: no stage batching)
    intra_op_threads: int | None = None
    kind: str = "cpu"

    def message(self):
        from tritonclient.grpc import model_config_pb2 as mc

        s, d = self.image_size, self.max_detections
        cfg = mc.ModelConfig(name=self.name, backend="python", max_batch_size=0)
        cfg.model_transaction_policy.decoupled = True
        cfg.input.add(name=INPUT_NAME, data_type=mc.TYPE_UINT8, dims=[1, 3, s, s])
        cfg.input.add(name="budget_ms", data_type=mc.TYPE_FP64, dims=[1])  # what is left of the budget, at send
        cfg.input.add(name="exits", data_type=mc.TYPE_INT32, dims=[2])  # shallowest and deepest exit allowed
        # 1: every exit on the way (a stream of refinements); 0 or absent: only the answer's head runs
        cfg.input.add(name="every_exit", data_type=mc.TYPE_INT32, dims=[1], optional=True)
        for name, dtype, dims in OUTPUTS:  # one image per request: its batch axis is the leading 1
            cfg.output.add(name=name, data_type=mc.DataType.Value(dtype), dims=[1, *dims(d)])
        cfg.output.add(name="exit", data_type=mc.TYPE_INT32, dims=[1])  # 0: the end marker of a stopped request
        cfg.output.add(name="final", data_type=mc.TYPE_INT32, dims=[1])  # 1 on a request's last response
        kind = mc.ModelInstanceGroup.KIND_GPU if self.kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        cfg.instance_group.add(count=1, kind=kind)
        stages = range(1, self.num_stages + 1)
        params = {"features": ",".join(map(features_file, stages)), "heads": ",".join(map(head_file, stages)),
                  "levels": ",".join(map(str, self.levels)), "max_stage_batch": str(self.max_stage_batch)}
        if self.intra_op_threads is not None:
            params["intra_op_thread_count"] = str(self.intra_op_threads)
        for key, value in params.items():
            cfg.parameters[key].string_value = value
        return cfg

    def to_pbtxt(self) -> str:
        from google.protobuf import text_format

        return text_format.MessageToString(self.message())


def features_file(stage: int) -> str:
    return f"features{stage}.onnx"


def head_file(exit: int) -> str:
    return f"head{exit}.onnx"


def write_progressive_dir(repo: str | Path, config: ProgressiveModelConfig, features: list[bytes],
                          heads: list[bytes], version: int = 1) -> Path:
    """Write (or replace) the progressive model: its config, model.py and two ONNX files per stage (its
    features, its exit's head)."""
    if not len(features) == len(heads) == config.num_stages:
        raise ValueError(f"{config.num_stages} stages configured, {len(features)} features and {len(heads)} head "
                         "graphs given")
    files = {features_file(k): data for k, data in enumerate(features, start=1)}
    files.update({head_file(k): data for k, data in enumerate(heads, start=1)})
    files["model.py"] = PROGRESSIVE_MODEL_TEMPLATE
    return _write_model(repo, config.name, version, config.to_pbtxt(), files)


def refresh_runners(repo: str | Path) -> list[str]:
    """Bring every python model's ``model.py`` in ``repo`` up to this package's template, in place.

    The runner is code of this package, copied next to the graphs at export time; an export made by an older
    version of the package would otherwise keep serving the old runner (the graphs and configs stay valid).
    Returns the models whose runner was replaced."""
    repo = Path(repo)
    replaced = []
    for runner in sorted(repo.glob("*/[0-9]*/model.py")):
        template = PROGRESSIVE_MODEL_TEMPLATE if runner.parent.parent.name == PROGRESSIVE_MODEL else PYTHON_MODEL_TEMPLATE
        if runner.read_bytes() != template.read_bytes():
            atomic_write(runner, template.read_text())
            replaced.append(runner.parent.parent.name)
    return replaced


def configure_exits(repo: str | Path, instances: int | None = None, intra_op_threads: int | None = None) -> list[str]:
    """Set the exit models' instance count and ONNX Runtime intra-op threads in their ``config.pbtxt``, in place
    (the graphs stay); ``None`` leaves a setting as it is. Returns the models whose config changed.

    On a 2-core machine one call on two threads and two calls on one thread each use the cores differently
    (a second thread buys exit 1 little and costs more CPU); ``anytime serve`` sets this before Triton starts."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    if instances is not None and instances < 1 or intra_op_threads is not None and intra_op_threads < 0:
        raise ValueError(f"instances must be >= 1 and intra-op threads >= 0, got {instances}, {intra_op_threads}")
    changed = []
    for entry in read_manifest(repo)["exits"]:
        path = Path(repo) / entry["model"] / "config.pbtxt"
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
        before = cfg.SerializeToString(deterministic=True)
        if instances is not None:
            for group in cfg.instance_group:
                group.count = instances
        if intra_op_threads is not None:
            cfg.parameters["intra_op_thread_count"].string_value = str(intra_op_threads)
        if cfg.SerializeToString(deterministic=True) != before:
            atomic_write(path, text_format.MessageToString(cfg))
            changed.append(entry["model"])
    return changed


def exit_instances(repo: str | Path) -> int:
    """How many calls of one exit model the repository's Triton runs at once (its instance count): the gateway's
    default number of calls in flight per endpoint."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    entry = read_manifest(repo)["exits"][0]
    cfg = text_format.Parse((Path(repo) / entry["model"] / "config.pbtxt").read_text(), mc.ModelConfig())
    return max(1, sum(group.count or 1 for group in cfg.instance_group) or 1)


def _write_model(repo: str | Path, name: str, version: int, config_text: str, files: dict) -> Path:
    """Model ``name`` version ``version`` in ``repo`` with ``files`` (name -> bytes or a path to copy).

    A new model directory appears in one rename (config and version together); an existing one gets its
    version directory swapped in atomically, then its config.pbtxt replaced atomically.
    """
    if int(version) < 1:
        raise ValueError(f"version must be >= 1, got {version!r}")
    if not name or name.startswith(".") or "/" in name:
        raise ValueError(f"bad model name {name!r}")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    model_dir = repo / name

    if not model_dir.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
        try:
            _fill_version_dir(staging / str(version), files)
            (staging / "config.pbtxt").write_text(config_text)
            os.chmod(staging, 0o755)
            os.rename(staging, model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return model_dir

    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        _fill_version_dir(staging, files)
        os.chmod(staging, 0o755)
        _replace_dir(staging, model_dir / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the old version
    atomic_write(model_dir / "config.pbtxt", config_text)
    return model_dir


def _fill_version_dir(path: Path, files: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, (bytes, bytearray, memoryview)):
            (path / name).write_bytes(bytes(content))
        else:
            shutil.copyfile(content, path / name)


def _replace_dir(src: Path, dst: Path) -> None:
    """Put directory ``src`` at ``dst``; afterwards ``src`` holds the old ``dst`` (if any).

    Uses renameat2(RENAME_EXCHANGE) so ``dst`` never goes missing; falls back to two renames where the
    kernel or libc lack it.
    """
    if not dst.exists():
        os.rename(src, dst)
        return
    if _exchange(src, dst):
        return
    aside = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(dst, aside)
    os.rename(src, dst)
    os.rename(aside, src)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, so a manifest can pin exactly which ONNX file each exit serves."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(repo: str | Path, manifest: dict[str, Any]) -> Path:
    """Atomically write ``<repo>/manifest.json``.

    Expected keys: ``exits`` (one entry per exit, e.g. ``{"exit": k, "model": "anytime_exit{k}",
    "sha256": ...}``), ``image_size``, ``max_detections``, ``class_names``; optionally ``latency_profile``.
    """
    missing = [k for k in MANIFEST_REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / MANIFEST_NAME
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(repo: str | Path) -> dict[str, Any]:
    """Read ``<repo>/manifest.json``; a missing or incomplete manifest is a clear error."""
    path = Path(repo) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {repo} (run `anytime export` first)")
    manifest = read_json(path)
    missing = [k for k in MANIFEST_REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return manifest
