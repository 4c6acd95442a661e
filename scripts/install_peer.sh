#!/usr/bin/env bash
# Build .venv-peer: the engine's pinned environment (requirements.txt) plus TRL (requirements-peer.txt), for
# `make bench-peer` (scripts/bench_peer.py: TRL's GRPOTrainer on `make bench`'s workload, side by side).
#
#     bash scripts/install_peer.sh            # idempotent: a no-op when the venv is up to date
#     PEER_VENV=/somewhere bash scripts/install_peer.sh
#
# Kept apart from .venv on purpose: the engine must never import trl. torch==2.13.0 first (that spec takes the CPU
# wheel lying on disk, docs/PLATFORM.md), then the pins and trl in one resolution with the pins as constraints.
# torchvision is removed if anything pulled it in: PyPI's build is CUDA-only and breaks imports beside CPU torch,
# and without it transformers falls back to the same PIL image processor the engine uses.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEER_VENV:-.venv-peer}
PY=${PY:-python3}
STAMP="$VENV/.installed"
start=$(date +%s)

if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements.txt ] && [ "$STAMP" -nt requirements-peer.txt ] \
        && [ "$STAMP" -nt scripts/install_peer.sh ]; then
    echo "install_peer: $VENV is up to date (delete $STAMP to reinstall)"
    exit 0
fi

test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -qq --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
PINS="$VENV/engine-pins.txt"
grep -E '^[A-Za-z]' requirements.txt > "$PINS"
"${PIP[@]}" -c "$PINS" -r "$PINS" -r requirements-peer.txt
for pkg in torchvision torchaudio torchcodec; do
    if "$VPY" -m pip show "$pkg" >/dev/null 2>&1; then
        "$VPY" -m pip uninstall -qq -y "$pkg"
        echo "install_peer: removed $pkg (CUDA-only build on PyPI; breaks transformers' imports beside CPU torch)"
    fi
done
"$VPY" -c "import torch, transformers, trl; print(f'install_peer: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}: all import')"
touch "$STAMP"
echo "install_peer: done in $(( $(date +%s) - start )) s; $VENV is $(du -sh "$VENV" | cut -f1)"
