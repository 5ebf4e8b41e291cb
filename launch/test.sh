#!/usr/bin/env bash
# Set up (if needed) and run the whole CPU test suite plus lint.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh --dev
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
