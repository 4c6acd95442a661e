#!/usr/bin/env bash
# Install open_clip (reward.clip_backend = "open_clip", rewards/clip_openclip.py) into a venv: the engine's pinned
# requirements.txt plus open_clip_torch and its dependencies, with torchvision patched to import beside CPU torch.
#
#     bash scripts/install_openclip.sh                          # builds .venv-openclip; a no-op when up to date
#     OPENCLIP_VENV=.venv bash scripts/install_openclip.sh      # into the engine's own venv instead (see below)
#
# Kept in its own venv by default: torchvision in a venv switches transformers to its torchvision ("fast") image
# processors and makes stock AutoProcessor work, so the engine's .venv would preprocess images differently from
# the venv its tests pin numbers in. Installing into .venv works; do it on purpose.
# What it does beyond `pip install` (docs/PLATFORM.md "Installing"):
#   - torch==2.13.0 first: that spec takes the CPU wheel lying on disk (any other spec downloads a CUDA build);
#     requirements.txt is also passed as constraints, so resolving open_clip can never move torch/transformers;
#   - torchvision 0.28.0 (the release built for torch 2.13) is a CUDA build on PyPI: its two unguarded
#     `register_fake("torchvision::…")` decorators raise `operator torchvision::nms does not exist` at import;
#     they are made conditional on `torchvision.extension._has_ops()` (the same fix as scripts/install_vllm.sh,
#     whose marker is recognised too). open_clip imports torchvision.transforms at import time.
#   - open_clip never downloads here: rewards/clip_openclip.py loads `local-dir:` folders only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPENCLIP_VENV:-.venv-openclip}
PY=${PY:-python3}
STAMP="$VENV/.openclip-installed"
start=$(date +%s)

if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements.txt ] && [ "$STAMP" -nt scripts/install_openclip.sh ] && [ "$STAMP" -nt scripts/patch_torchvision.py ]; then
    echo "install_openclip: $VENV is up to date (delete $STAMP to reinstall)"
    exit 0
fi

test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -c requirements.txt -r requirements.txt \
    open_clip_torch==3.3.0 torchvision==0.28.0 timm==1.0.31 ftfy==6.3.1

"$VPY" scripts/patch_torchvision.py install_openclip

"$VPY" - <<'PY'
import torch, torchvision, open_clip, transformers
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"install_openclip: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"open_clip {open_clip.__version__}, transformers {transformers.__version__}")
PY
touch "$STAMP"
echo "install_openclip: done in $(( $(date +%s) - start )) s; $VENV is $(du -sh "$VENV" | cut -f1)"
