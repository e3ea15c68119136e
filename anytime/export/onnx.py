"""The detector as ONNX graphs: one per exit (uint8 pixels in, padded detections out), and two per stage of
progressive execution: its features (stage 1: pixels in; stage k: pyramid k-1's features in; pyramid k's out) and
its head (pyramid k's features in, exit k's detections out).

Input normalisation, box decoding and NMS are inside the graphs, so a server needs nothing but an ONNX
runtime. The batch axis is dynamic.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from anytime.model.retinanet import AnytimeRetinaNet, ExitModel, FeaturesModel, HeadModel

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
CANDIDATE_NAMES = ("candidate_scores", "candidate_boxes")  # verification only: every anchor, before NMS
OPSET = 17


def feature_names(levels, suffix: str = "") -> tuple[str, ...]:
    """Names of a stage's feature tensors, one per pyramid level: ``p3``.. as inputs, ``p3_out``.. as outputs."""
    return tuple(f"p{level}{suffix}" for level in levels)


def features_io(model: AnytimeRetinaNet, stage: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a stage's features graph."""
    inputs = (INPUT_NAME,) if stage == 1 else feature_names(model.levels)
    return inputs, feature_names(model.levels, "_out")


def head_io(model: AnytimeRetinaNet) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a head graph (every exit's is alike)."""
    return feature_names(model.levels), OUTPUT_NAMES


def export_exit(model: AnytimeRetinaNet, exit: int, path: str | Path | None = None,
                with_candidates: bool = False) -> bytes:
    """Export exit ``exit`` (backbone + pyramids 1..exit + head exit) and return the ONNX bytes.

    Uses the TorchScript-based exporter: our post-processing is written with batch-level tensor ops, so
    tracing captures it exactly and exports in about a second (the dynamo exporter takes far longer here).
    ``with_candidates`` adds the pre-NMS outputs ``CANDIDATE_NAMES``; ``served_graph`` strips them again.
    """
    size = model.cfg.image_size
    example = (torch.zeros(2, 3, size, size, dtype=torch.uint8),)
    return _export(ExitModel(model, exit, with_candidates), example, (INPUT_NAME,),
                   OUTPUT_NAMES + (CANDIDATE_NAMES if with_candidates else ()), path)


def export_features(model: AnytimeRetinaNet, stage: int, path: str | Path | None = None) -> bytes:
    """Export stage ``stage``'s features graph (see ``FeaturesModel``) and return the ONNX bytes."""
    inputs, outputs = features_io(model, stage)
    return _export(FeaturesModel(model, stage), _stage_example(model, stage), inputs, outputs, path)


def export_head(model: AnytimeRetinaNet, exit: int, path: str | Path | None = None,
                with_candidates: bool = False) -> bytes:
    """Export exit ``exit``'s head graph (see ``HeadModel``) and return the ONNX bytes."""
    inputs, outputs = head_io(model)
    return _export(HeadModel(model, exit, with_candidates), _stage_example(model, 2, after_pyramid=True), inputs,
                   outputs + (CANDIDATE_NAMES if with_candidates else ()), path)


def _stage_example(model: AnytimeRetinaNet, stage: int, after_pyramid: bool = False) -> tuple:
    """Example inputs of a stage graph, batch 2: images for stage 1, features (per level) after it; with
    ``after_pyramid``, a pyramid network's outputs (a head's inputs)."""
    size = model.cfg.image_size
    images = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    if stage == 1:
        return (images,)
    with torch.no_grad():
        feats = model.stem(images)  # the features' shapes, per level
        return tuple(model.pyramid(1, feats) if after_pyramid else feats)


def _export(module: torch.nn.Module, example: tuple, inputs: tuple[str, ...], outputs: tuple[str, ...],
            path: str | Path | None) -> bytes:
    model = module.model
    buf = io.BytesIO()
    was_training = model.training  # the exporter restores the wrapper's mode recursively; keep the caller's
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), example, buf, dynamo=False, opset_version=OPSET, input_names=list(inputs),
            output_names=list(outputs), dynamic_axes={n: {0: "batch"} for n in (*inputs, *outputs)},
        )
    model.train(was_training)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def served_graph(onnx_bytes: bytes) -> bytes:
    """The graph with only the served outputs: the verified graph minus the nodes that only feed the candidates.

    Every node that remains is a node that was verified, so the served file computes exactly what was checked.
    (``onnx.utils.Extractor`` would do this, but it ignores the outer-scope tensors that an ``If`` subgraph reads,
    and batched NMS exports as one, so it prunes nodes the NMS branch needs.)
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    served = [o.name for o in graph.output if o.name not in CANDIDATE_NAMES]
    if len(served) == len(graph.output):
        return onnx_bytes
    needed = set(served)
    keep = []
    for node in reversed(graph.node):  # nodes are in topological order: walk back from the outputs
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(_reads(node))
    del graph.node[:]
    graph.node.extend(reversed(keep))
    kept_outputs = [o for o in graph.output if o.name in served]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    used_inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used_inits)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _reads(node) -> set[str]:
    """Every tensor a node reads, including those its subgraphs (If/Loop bodies) take from the outer scope."""
    import onnx

    names = {x for x in node.input if x}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            produced = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {
                i.name for i in sub.initializer}
            for n in sub.node:
                names |= _reads(n) - produced
    return names
