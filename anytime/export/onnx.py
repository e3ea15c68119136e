"""One exit of the detector as an ONNX graph: uint8 pixels in, padded detections out.

Input normalisation, box decoding and NMS are inside the graph, so a server needs nothing but an ONNX
runtime. The batch axis is dynamic.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from anytime.model.retinanet import AnytimeRetinaNet, ExitModel

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
OPSET = 17


def export_exit(model: AnytimeRetinaNet, exit: int, path: str | Path | None = None) -> bytes:
    """Export exit ``exit`` (backbone + pyramids 1..exit + head exit) and return the ONNX bytes.

    Uses the TorchScript-based exporter: our post-processing is written with batch-level tensor ops, so
    tracing captures it exactly and exports in about a second (the dynamo exporter takes far longer here).
    """
    size = model.cfg.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    buf = io.BytesIO()
    was_training = model.training  # the exporter restores the wrapper's mode recursively; keep the caller's
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ExitModel(model, exit).eval(), (example,), buf, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
        )
    model.train(was_training)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
