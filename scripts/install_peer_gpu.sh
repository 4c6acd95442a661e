#!/usr/bin/env bash
# Build .venv-peer-gpu: the GPU peer's environment for `make bench-peer-gpu` (scripts/bench_peer_gpu.py: TRL's
# GRPOTrainer on `make bench-gpu`'s workload, on the same card).
#
#     bash scripts/install_peer_gpu.sh                                 # idempotent: a no-op when up to date
#     GPU_PY=/opt/conda/bin/python bash scripts/install_peer_gpu.sh     # the Python whose CUDA torch bench-gpu uses
#     PEER_WHEELS=/path/to/wheels bash scripts/install_peer_gpu.sh     # no internet: pip takes only these wheels
#
# The venv sees GPU_PY's own packages (a .pth file naming its site-packages, which works whether GPU_PY is a system
# Python, a conda env or another venv) and adds TRL and datasets (requirements-peer.txt) on top, with GPU_PY's
# torch, transformers, accelerate, numpy, huggingface_hub, tokenizers and safetensors as constraints: pip can never
# move the CUDA torch or the transformers that `make bench-gpu` measured ours with, so both sides run on the same
# stack. Nothing is installed into GPU_PY itself. A machine without internet (the lent GPU machines): fetch the
# wheels elsewhere with `pip download -r requirements-peer.txt -d DIR --python-version 3.12 --only-binary=:all:`
# and bring DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEER_GPU_VENV:-.venv-peer-gpu}
GPU_PY=${GPU_PY:-python3}
STAMP="$VENV/.installed"
start=$(date +%s)

if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements-peer.txt ] && [ "$STAMP" -nt scripts/install_peer_gpu.sh ]; then
    echo "install_peer_gpu: $VENV is up to date (delete $STAMP to reinstall)"
    exit 0
fi

"$GPU_PY" -c "import torch, transformers" || { echo "install_peer_gpu: $GPU_PY has no torch / transformers" >&2; exit 2; }
test -x "$VENV/bin/python" || "$GPU_PY" -m venv "$VENV"
VPY="$VENV/bin/python"
# GPU_PY's site-packages, after the venv's own: what is installed here wins only where it is new.
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$GPU_PY" -c "import site, sys; print('\n'.join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p))" \
    > "$SITE/gpu_py.pth"
PINS="$VENV/gpu-py-pins.txt"
"$GPU_PY" -m pip freeze 2>/dev/null | grep -i -E '^(torch|transformers|accelerate|numpy|huggingface[-_]hub|tokenizers|safetensors)==' \
    > "$PINS" || true
PIP=("$VPY" -m pip install -qq --disable-pip-version-check)
if [ -n "${PEER_WHEELS:-}" ]; then
    PIP+=(--no-index --find-links "$PEER_WHEELS")
fi
"${PIP[@]}" -c "$PINS" -r requirements-peer.txt
"$VPY" - "$PINS" <<'PY'
import sys
import torch, transformers, trl, datasets  # noqa: F401
pins = dict(line.strip().split("==") for line in open(sys.argv[1]) if "==" in line)
for name, mod in (("torch", torch), ("transformers", transformers)):
    if name in pins:
        assert mod.__version__ == pins[name], f"{name} {mod.__version__} != GPU_PY's {pins[name]}"
print(f"install_peer_gpu: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), transformers "
      f"{transformers.__version__}, trl {trl.__version__}, datasets {datasets.__version__}: all import")
PY
touch "$STAMP"
echo "install_peer_gpu: done in $(( $(date +%s) - start )) s; $VENV is $(du -sh "$VENV" | cut -f1)"
