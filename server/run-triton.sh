#!/usr/bin/env bash
# Run Triton on the exported repository in the foreground, supervised (restarted if it dies): PyPI's Triton
# bundled with nvidia-pytriton and the python backend, as on the project's CPU machines. On NVIDIA's images use
# `tritonserver --model-repository=...` on a repository exported with `--backend onnxruntime` instead.
#   REPOSITORY (default model_repository), HTTP_PORT 8000, GRPC_PORT 8001, METRICS_PORT 8002, HOST 127.0.0.1
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/anytime triton --repository "${REPOSITORY:-model_repository}" --host "${HOST:-127.0.0.1}" \
    --http-port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" --metrics-port "${METRICS_PORT:-8002}"
