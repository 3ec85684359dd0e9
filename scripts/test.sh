#!/usr/bin/env bash
# Install what is missing (pinned in pyproject.toml; torch from the local wheels; Chromium and chromedriver for the
# UI check where apt is available), then run the test suite: it also runs ruff, lint-imports and the strict docs build
# (tests/test_structure.py, tests/test_docs.py), so CI fails on a broken rule or a broken link.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[test]"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
      >/dev/null 2>&1 && echo "installed chromium and chromedriver for the UI check" \
      || echo "note: apt-get could not install chromium and chromium-driver: the UI check will be skipped"
  else
    echo "note: no apt-get as root here to install chromium and chromium-driver: the UI check will be skipped"
  fi
fi
python -m pytest -q --durations=12 tests "$@"  # the slowest tests are listed at the end
