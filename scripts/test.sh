#!/usr/bin/env bash
# Install what is missing (pinned in pyproject.toml; torch from the local wheels), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[test]"
python -m pytest -q --durations=12 tests "$@"  # the slowest tests are listed at the end
