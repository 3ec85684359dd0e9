#!/usr/bin/env bash
# Start the local cluster (Ray head + worker node, S3 endpoint, MLflow server) on 127.0.0.1.
set -euo pipefail
exec python "$(dirname "$0")/cluster.py" up "$@"
