"""Checkpoint -> Triton model repository: one ONNX model per exit, checked against PyTorch, plus a manifest.

Everything is exported and verified in memory before the first byte is written, so a bad checkpoint leaves
an existing repository untouched; each model version directory is then swapped in atomically.

This module imports torch. Whether a repository needs an export at all, and the export run in a child process
for the processes that serve, are in ``anytime.export.ensure``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import torch

from anytime.export.accuracy import ap_per_exit, find_report
from anytime.export.onnx import INPUT_NAME, OUTPUT_NAMES, export_exit, export_features, export_head, served_graph
from anytime.options import Option, report_candidates, select
from anytime.export.repository import (PROGRESSIVE_MODEL, ProgressiveModelConfig, features_file, head_file,
                                       model_name, read_manifest, sha256_file, sized_onnx_file, write_manifest,
                                       write_model_dir, write_progressive_dir)
from anytime.export.verify import Mismatch, verify_features, verify_graph, verify_head

MODEL_PREFIX = model_name(0)[:-1]  # "anytime_exit"
MANIFEST_FORMAT = 1


def export_repository(model, meta: dict, out: str | Path, *, backend: str = "python", max_batch_size: int = 8,
                      instances: int = 1, intra_op_threads: int | None = None, verify: bool = True,
                      stages: bool = True, max_stage_batch: int = 8, ap_report: str | Path | None = None,
                      sizes: list[int] | None = None, progress=print) -> dict:
    """Write every exit of ``model`` (and, with ``stages``, the progressive model of its stages) into the
    repository ``out`` and return the manifest. ``instances`` and ``intra_op_threads`` (None: the runtime's
    default) configure each exit model. Each exit's AP comes from an evaluation report of the checkpoint
    (``ap_report``, else the places ``anytime.export.accuracy`` looks in); without one the manifest's AP is null.

    Input sizes other than the model's own (``sizes``; None: those the report evaluated, ``anytime eval --sizes``)
    become options when ``anytime.options.select`` keeps them: each kept (size, exit) is one more graph in
    exit k's model, which then takes any of its sizes (python backend only: Triton's native ONNX Runtime backend
    serves one graph per model)."""
    out = Path(out)
    model = model.eval()
    cfg = model.cfg
    default_size = cfg.image_size
    exit_ids = list(range(1, model.num_exits + 1))
    checkpoint_sha = sha256_file(meta["path"]) if meta.get("path") and Path(meta["path"]).is_file() else None
    report, ap_source = find_report(meta["path"], checkpoint_sha, exit_ids, ap_report) if meta.get(
        "path") else (None, None)
    ap = ap_per_exit(report, checkpoint_sha, exit_ids, ap_source) if report else None
    if ap is None:
        progress("no evaluation report of this checkpoint found: the manifest has no AP per exit "
                 "(run `anytime eval --checkpoint ...`, then export again)")
    options = _options(model, report, sizes, backend, progress)

    exported: dict[tuple[int, int], bytes] = {}
    for o in options:
        t0 = time.perf_counter()
        model.set_image_size(o.image_size)
        try:
            data = export_exit(model, o.exit, with_candidates=verify)
            if verify:
                try:
                    verify_graph(model, o.exit, data, _probe(o.image_size))
                except Mismatch as e:
                    raise RuntimeError(f"option {o.name}: the ONNX model does not reproduce PyTorch: {e}") from None
        finally:
            model.set_image_size(default_size)
        exported[(o.image_size, o.exit)] = data = served_graph(data)
        progress(f"exit {o.exit} at {o.image_size} px: exported {len(data) / 1e6:.1f} MB in "
                 f"{time.perf_counter() - t0:.1f} s" + (" (matches PyTorch)" if verify else ""))
    features, heads = _export_stages(model, _probe(default_size), verify, progress) if stages else ([], [])

    old = read_manifest(out) if (out / "manifest.json").exists() else None
    out.mkdir(parents=True, exist_ok=True)
    exits, costs = [], _costs(cfg, default_size)
    for k in exit_ids:
        data = exported[(default_size, k)]
        others = {size: exported[(size, e)] for size, e in sorted(exported) if e == k and size != default_size}
        write_model_dir(out, model_name(k), data, image_size=default_size, max_detections=cfg.detections_per_img,
                        backend=backend, max_batch_size=max_batch_size, instances=instances,
                        intra_op_threads=intra_op_threads, other_sizes=others)
        exits.append({"exit": k, "model": model_name(k), "sha256": hashlib.sha256(data).hexdigest(),
                      "params": costs[k]["params"], "gmacs": costs[k]["gmacs"],
                      "ap": ap[k] if ap else None,
                      "sizes": {str(size): hashlib.sha256(d).hexdigest() for size, d in others.items()}})
    progressive = None
    if features:
        write_progressive_dir(out, ProgressiveModelConfig(
            name=PROGRESSIVE_MODEL, image_size=default_size, max_detections=cfg.detections_per_img,
            num_stages=len(features), levels=tuple(model.levels), max_stage_batch=max_stage_batch), features, heads)
        progressive = {"model": PROGRESSIVE_MODEL, "max_stage_batch": max_stage_batch, "levels": list(model.levels),
                       "stages": [{"stage": k, "features": features_file(k), "head": head_file(k),
                                   "sha256": [hashlib.sha256(f).hexdigest(), hashlib.sha256(h).hexdigest()]}
                                  for k, (f, h) in enumerate(zip(features, heads), start=1)]}
    elif (out / PROGRESSIVE_MODEL).exists():  # it would serve another model's stages
        shutil.rmtree(out / PROGRESSIVE_MODEL)
    # Exits that an older, deeper export left behind would be served by mistake: remove them.
    for stale in sorted(out.glob(f"{MODEL_PREFIX}*")):
        suffix = stale.name[len(MODEL_PREFIX):]
        if suffix.isdigit() and int(suffix) > model.num_exits:
            shutil.rmtree(stale)
    class_names = meta.get("class_names") or cfg.class_names or [f"class_{i}" for i in range(cfg.num_classes)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "exits": exits,
        "image_size": default_size,
        # what a client that letterboxes before sending should letterbox to: the gateway scales it down to the
        # size of the option it chooses (never up, which would serve the larger options blurred pixels)
        "max_image_size": max(o.image_size for o in options),
        "options": [o.to_dict() for o in options],
        "max_detections": cfg.detections_per_img,
        "num_classes": cfg.num_classes,
        "class_names": list(class_names),
        "cat_ids": meta.get("cat_ids") or list(range(1, cfg.num_classes + 1)),
        "input": {"name": INPUT_NAME, "dtype": "UINT8", "shape": [-1, 3, default_size, default_size]},
        "outputs": list(OUTPUT_NAMES),
        "progressive": progressive,
        "backend": backend,
        "max_batch_size": max_batch_size,
        "model_config": cfg.to_dict(),
        "checkpoint": meta.get("path"),
        "checkpoint_sha256": checkpoint_sha,
        "ap_source": ap_source,  # the evaluation report each exit's "ap" comes from
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # A profile measured for other weights would mislead the scheduler; keep it only for identical models.
        "latency_profile": (old or {}).get("latency_profile") if _same_models(old, exits) else None,
    }
    write_manifest(out, manifest)
    return manifest


def _probe(size: int) -> torch.Tensor:
    """The fixed random images (batch 2) every graph of one input size is checked on."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, size, size), generator=g, dtype=torch.uint8)


def _costs(cfg, size: int) -> dict[int, dict]:
    """{exit: {"params", "gmacs"}} of one image at ``size`` px."""
    from anytime.model.complexity import exit_costs

    return {e["exit"]: e for e in exit_costs(cfg.replace(image_size=size), every_exit=False)["exits"]}


def _options(model, report: dict | None, sizes: list[int] | None, backend: str, progress) -> list[Option]:
    """The (size, exit) pairs to export: every exit at the model's own size, plus the other sizes' options that
    ``select`` keeps (their AP from the report, their GMACs counted here)."""
    cfg = model.cfg
    default_size = cfg.image_size
    exit_ids = list(range(1, model.num_exits + 1))
    found = report_candidates(report, default_size, exit_ids)
    wanted = sorted(set(sizes) if sizes is not None else {s for s, _ in found}) or [default_size]
    for size in wanted:
        cfg.replace(image_size=size).validate()  # a size the pyramid cannot take is a clear error, before any work
    if backend != "python" and wanted != [default_size]:
        progress("the onnxruntime backend serves one graph per model: exporting the model's own size only")
        wanted = [default_size]
    candidates = []
    for size in sorted(set(wanted) | {default_size}):
        costs = _costs(cfg, size)
        candidates += [Option(size, k, model_name(k), costs[k]["gmacs"], found.get((size, k))) for k in exit_ids]
    missing = sorted({o.image_size for o in candidates if o.ap is None and o.image_size != default_size})
    if missing:
        progress(f"no AP for input size(s) {missing} in the evaluation report (`anytime eval --sizes`): "
                 "they are not served")
        candidates = [o for o in candidates if o.image_size not in missing]
    chosen = select(candidates, default_size)
    extra = [o.name for o in chosen if o.image_size != default_size]
    if extra:
        progress(f"options beyond {default_size} px (on the AP-compute frontier, AP >= half of exit 1's): "
                 + ", ".join(extra))
    return chosen


def _export_stages(model, probe: torch.Tensor, verify: bool, progress) -> tuple[list[bytes], list[bytes]]:
    """Every stage's features graph and head graph, each checked against PyTorch on the previous stage's PyTorch
    features (so that an error shows where it starts rather than accumulating down the chain)."""
    features, heads, inputs = [], [], (probe,)
    for k in range(1, model.num_exits + 1):
        t0 = time.perf_counter()
        feats, head = export_features(model, k), export_head(model, k, with_candidates=verify)
        if verify:
            try:
                inputs = verify_features(model, k, feats, inputs)
                verify_head(model, k, head, inputs)
            except Mismatch as e:
                raise RuntimeError(f"stage {k}: the ONNX model does not reproduce PyTorch: {e}") from None
        features.append(feats)
        heads.append(head := served_graph(head))
        progress(f"stage {k}: exported {(len(feats) + len(head)) / 1e6:.1f} MB (features and head) in "
                 f"{time.perf_counter() - t0:.1f} s" + (" (matches PyTorch)" if verify else ""))
    return features, heads


def _same_models(old: dict | None, exits: list[dict]) -> bool:
    return bool(old) and [(e.get("sha256"), e.get("sizes") or {}) for e in old.get("exits", [])] == [
        (e["sha256"], e["sizes"]) for e in exits]
