"""Triton python-backend model that serves one exported ONNX graph (``model.onnx``) with ONNX Runtime.

Copied verbatim as ``model.py`` into every version directory by ``anytime.export.repository``; it runs inside
Triton's python stub, so it imports only numpy and onnxruntime (never torch: importing it in the stub costs
seconds of startup per instance). Inputs and outputs, their names, data types and shapes, are read from the
model's config (``initialize``), as in Triton's python-backend examples: the same file serves an exit (uint8
images in, detections out) or a stage (features in and out). Config parameters it reads (all optional):

- ``onnx_file``: file name inside the version directory (default ``model.onnx``);
- ``onnx_sizes``: "256:model.onnx,128:model_128.onnx": one graph per input size (an exit served at several sizes);
  each request runs the graph of its images' height and width (square), and requests of different sizes never share
  a call;
- ``intra_op_thread_count`` / ``inter_op_thread_count``: ONNX Runtime thread pools (0 = runtime default);
- ``allow_spinning``: "1" lets ORT threads busy-wait between calls (faster, but burns shared CPU cores);
- ``execution_provider``: "auto" (default: CUDA first when onnxruntime-gpu and a GPU are present) or "cpu".
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _gpu_present():
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl"))


class TritonPythonModel:
    """One ORT session per model instance and input size; dynamically batched requests of one size share one ORT
    call."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "model")
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        files = {None: params.get("onnx_file") or "model.onnx"}  # None: the one graph, whatever the size
        if params.get("onnx_sizes"):
            files = {}
            for item in params["onnx_sizes"].split(","):
                size, name = item.split(":", 1)
                files[int(size)] = name
        # name -> (numpy dtype, dims without the batch axis; -1 = any)
        self.inputs = {i["name"]: (pb_utils.triton_string_to_numpy(i["data_type"]), [int(d) for d in i["dims"]])
                       for i in config.get("input", [])}
        self.outputs = {}
        for o in config.get("output", []):
            out = pb_utils.get_output_config_by_name(config, o["name"])
            self.outputs[o["name"]] = pb_utils.triton_string_to_numpy(out["data_type"])
        if not self.inputs or not self.outputs:
            raise pb_utils.TritonModelException(f"{self.name}: the config must name its inputs and outputs")

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
        self.sessions = {}  # input size (None: any) -> session
        for size, name in files.items():
            path = os.path.join(version_dir, name)
            session = ort.InferenceSession(path, sess_options=options, providers=providers)
            graph_in = {i.name for i in session.get_inputs()}
            graph_out = {o.name for o in session.get_outputs()}
            missing = sorted((set(self.inputs) - graph_in) | (set(self.outputs) - graph_out))
            if missing:
                raise pb_utils.TritonModelException(f"{self.name}: {path} lacks the configured tensors {missing}")
            self.sessions[size] = session
        self.output_names = list(self.outputs)
        self._warm_up()

    def _warm_up(self):
        """One call per graph on zeros, here rather than in the first request: ONNX Runtime sizes its memory arena
        and picks kernels on a session's first run, which took tens of milliseconds more than a warm call (with two
        instances per model, the second instance's first calls came only under load, and late)."""
        for size, session in self.sessions.items():
            feed = {}
            for name, (dtype, dims) in self.inputs.items():
                shape = [1] + [size if d == -1 and size is not None else d for d in dims]
                if any(d < 1 for d in shape):
                    return  # a graph with free dims and no size to fill them with: nothing to warm up with
                feed[name] = np.zeros(shape, dtype=dtype)
            try:
                session.run(self.output_names, feed)
            except Exception:  # a graph that refuses zeros still serves real inputs; warming up is best effort
                pass

    def _tensors(self, request):
        """The request's inputs as arrays, or ValueError with what is wrong."""
        arrays, batch = {}, None
        for name, (dtype, dims) in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            a = tensor.as_numpy()
            if a.dtype != dtype:
                raise ValueError(f"input {name!r} must be {np.dtype(dtype).name}, got {a.dtype}")
            if a.ndim != len(dims) + 1 or any(d != -1 and d != s for d, s in zip(dims, a.shape[1:])):
                raise ValueError(f"input {name!r} must have shape [n, {', '.join(map(str, dims))}], got {list(a.shape)}")
            if a.shape[0] < 1 or (batch is not None and a.shape[0] != batch):
                raise ValueError(f"input {name!r} has a batch of {a.shape[0]}; every input needs the same batch >= 1")
            arrays[name], batch = a, a.shape[0]
        return arrays, batch

    def _size(self, arrays):
        """The input size of a request's images (None when the model has one graph for every size)."""
        if None in self.sessions:
            return None
        shape = next(iter(arrays.values())).shape
        if shape[-1] != shape[-2] or shape[-1] not in self.sessions:
            raise ValueError(f"images of {shape[-2]}x{shape[-1]} px; this model takes square inputs of "
                             f"{', '.join(map(str, sorted(self.sessions)))} px")
        return shape[-1]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # input size -> [(request index, inputs, batch size)]: one ORT call per size
        for i, request in enumerate(requests):
            try:
                arrays, n = self._tensors(request)
                groups.setdefault(self._size(arrays), []).append((i, arrays, n))
            except ValueError as e:
                responses[i] = _error(f"{self.name}: {e}")
        for size, good in groups.items():
            feed = {name: good[0][1][name] if len(good) == 1 else np.concatenate([g[1][name] for g in good])
                    for name in self.inputs}
            try:
                outputs = self.sessions[size].run(self.output_names, feed)
            except Exception as e:  # a runtime failure fails this batch only, never the server
                for i, _, _ in good:
                    responses[i] = _error(f"{self.name}: onnxruntime failed: {e}")
                continue
            outputs = [np.asarray(o, dtype=self.outputs[name]) for o, name in zip(outputs, self.output_names)]
            start = 0
            for i, _, n in good:
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                           for name, out in zip(self.output_names, outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses

    def finalize(self):
        self.sessions = {}


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
