#!/usr/bin/env bash
# The engine's dependencies on a GPU machine, into a Python that already has YOUR CUDA torch, without moving it:
#
#     GPU_PY=/opt/venv/bin/python bash scripts/install_gpu.sh          # then: make test-gpu GPU_PY=/opt/venv/bin/python
#     GPU_PY=... bash scripts/install_gpu.sh --dry-run                 # what pip would do, nothing installed
#
# requirements.txt pins torch==2.13.0, the CPU wheel of this project's CI; on a GPU machine torch is the one that
# matches its CUDA driver. So every other pin of requirements.txt is installed WITH its dependencies (unlike
# `pip install --no-deps`, which leaves out what transformers or peft need at run time), under the constraint that
# torch stays at the version already installed: pip fails loudly rather than replace it. flash-attn is optional
# (`pip install flash-attn --no-build-isolation`; `model.attn_implementation auto` uses torch's own varlen kernel
# without it), and so is vLLM (the CUDA `vllm` of requirements-vllm.txt's release).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PY:-python3}

version=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null) \
    || { echo "install_gpu: no torch in $PY: install the CUDA build for your driver first (pytorch.org)" >&2; exit 2; }
if [ "$("$PY" -c "import torch; print(torch.cuda.is_available())")" != True ]; then
    echo "install_gpu: note: torch $version in $PY sees no CUDA device on this machine"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -vE '^torch==' requirements.txt > "$work/requirements.txt"
echo "torch==$version" > "$work/constraints.txt"
"$PY" -m pip install --disable-pip-version-check "$@" -r "$work/requirements.txt" -c "$work/constraints.txt"
echo "install_gpu: the engine's dependencies beside torch $version in $PY"
