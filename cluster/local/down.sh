#!/usr/bin/env bash
# Stop exactly what up.sh started (by the process ids it recorded).
set -euo pipefail
exec python "$(dirname "$0")/cluster.py" down "$@"
