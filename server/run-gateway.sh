#!/usr/bin/env bash
# Run the anytime gateway in the foreground against running Triton server(s): the container entrypoint, and a
# launch script for bare metal. Settings come from the environment:
#   TRITON        Triton gRPC endpoints, HOST:PORT[,HOST:PORT...]   (default 127.0.0.1:8001)
#   REPOSITORY    the exported repository the Tritons serve (its manifest names exits and classes)
#   PORT          gateway gRPC port (default 50051), METRICS_PORT Prometheus port (default 9100)
#   HOST          address to listen on (default 0.0.0.0)
#   EXTRA_ARGS    anything else for `anytime serve` (e.g. "--token ... --default-budget-ms 100")
set -euo pipefail
anytime=${ANYTIME:-anytime}
[ -x "$(dirname "$0")/../.venv/bin/anytime" ] && anytime="$(dirname "$0")/../.venv/bin/anytime"
# shellcheck disable=SC2086
exec "$anytime" serve --host "${HOST:-0.0.0.0}" --port "${PORT:-50051}" --metrics-port "${METRICS_PORT:-9100}" \
    --triton "${TRITON:-127.0.0.1:8001}" --repository "${REPOSITORY:-model_repository}" ${EXTRA_ARGS:-}
