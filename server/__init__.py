"""Serving side: runs NVIDIA Triton Inference Server on the exported model repository."""
