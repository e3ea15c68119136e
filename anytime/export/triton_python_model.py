"""Triton python-backend model that serves one exported exit (``model.onnx``) with ONNX Runtime.

Copied verbatim as ``model.py`` into every version directory by ``anytime.export.repository``; it runs
inside Triton's python stub, so it imports only numpy and onnxruntime (never torch: importing it in the
stub costs seconds of startup per instance). Config parameters it reads (all optional):

- ``onnx_file``: file name inside the version directory (default ``model.onnx``);
- ``intra_op_thread_count`` / ``inter_op_thread_count``: ONNX Runtime thread pools (0 = runtime default);
- ``allow_spinning``: "1" lets ORT threads busy-wait between calls (faster, but burns shared CPU cores);
- ``execution_provider``: "auto" (default: CUDA first when onnxruntime-gpu and a GPU are present) or "cpu".
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
OUTPUT_DTYPES = (np.float32, np.float32, np.int64, np.int64)


def _gpu_present():
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl"))


class TritonPythonModel:
    """One ORT session per model instance; dynamically batched requests share one ORT call."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "model")
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_file") or "model.onnx")

        image_input = pb_utils.get_input_config_by_name(config, INPUT_NAME)
        if image_input is None:
            raise pb_utils.TritonModelException(f"{self.name}: config has no input {INPUT_NAME!r}")
        dims = [int(d) for d in image_input["dims"]]
        if len(dims) != 3 or dims[0] != 3 or dims[1] != dims[2] or dims[1] < 1:
            raise pb_utils.TritonModelException(f"{self.name}: input dims must be [3, S, S], got {dims}")
        self.image_size = dims[1]
        self.max_batch_size = int(config.get("max_batch_size", 0))

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
        options.inter_op_num_threads = int(params.get("inter_op_thread_count") or 0)
        spin = "1" if params.get("allow_spinning", "0") == "1" else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)

        providers = ["CPUExecutionProvider"]
        want = params.get("execution_provider", "auto").lower()
        gpu_kind = args.get("model_instance_kind") == "GPU"
        if want != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers() and (gpu_kind or _gpu_present()):
            device = int(args.get("model_instance_device_id") or 0) if gpu_kind else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)

        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing or INPUT_NAME not in {i.name for i in self.session.get_inputs()}:
            raise pb_utils.TritonModelException(
                f"{self.name}: {path} must have input {INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}; "
                f"missing outputs {missing}"
            )

    def _images(self, request):
        """The request's images as a uint8 [n, 3, S, S] array, or ValueError with what is wrong."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            raise ValueError(f"missing input {INPUT_NAME!r}")
        images = tensor.as_numpy()
        s = self.image_size
        if images.dtype != np.uint8:
            raise ValueError(f"input {INPUT_NAME!r} must be UINT8, got {images.dtype}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"input {INPUT_NAME!r} must have shape [n, 3, {s}, {s}], got {list(images.shape)}")
        if images.shape[0] < 1:
            raise ValueError(f"input {INPUT_NAME!r} has an empty batch")
        return images

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []  # (request index, images)
        for i, request in enumerate(requests):
            try:
                good.append((i, self._images(request)))
            except ValueError as e:
                responses[i] = _error(f"{self.name}: {e}")
        if good:
            batch = good[0][1] if len(good) == 1 else np.concatenate([images for _, images in good])
            try:
                outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            except Exception as e:  # a runtime failure fails this batch only, never the server
                for i, _ in good:
                    responses[i] = _error(f"{self.name}: onnxruntime failed: {e}")
            else:
                outputs = [np.asarray(o, dtype=t) for o, t in zip(outputs, OUTPUT_DTYPES)]
                start = 0
                for i, images in good:
                    stop = start + images.shape[0]
                    tensors = [
                        pb_utils.Tensor(name, np.ascontiguousarray(out[start:stop]))
                        for name, out in zip(OUTPUT_NAMES, outputs)
                    ]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start = stop
        return responses

    def finalize(self):
        self.session = None


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
