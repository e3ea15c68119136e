"""Export trained exits as ONNX models and lay them out as a Triton model repository."""
