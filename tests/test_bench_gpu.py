"""scripts/bench_gpu.py (`make bench-gpu`) on the CPU with the tiny shape: the script runs end to end in both
gradient-checkpointing modes and its bookkeeping is right (parameter split, token and patch counts, the GPU peak
table). Its GPU figures come from running it on a GPU (docs/BENCHMARKS.md says how).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_bench_gpu.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench_gpu import main, peak_flops


def test_peak_table_names_the_gpu():
    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA GH200 480GB") == 989e12  # not H100's entry by accident of substring order
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Tesla T4") is None  # unknown: the script asks for --peak-tflops instead of guessing


def test_tiny_shape_runs_both_modes_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--shape", "tiny", "--device", "cpu", "--prompts", "1", "--group", "2", "--new-tokens", "4",
                 "--side", "112", "--steps", "1", "--warmup", "0", "--work", str(tmp_path / "work"),
                 "--peak-tflops", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [m["gradient_checkpointing"] for m in r["modes"]] == [True, False]
    assert r["settings"] == {"arch": "qwen2_5_vl", "shape": "tiny", "prompts": 1, "group": 2, "new_tokens": 4,
                             "side": 112, "kl_beta": 0.04, "dtype": "float32"}  # what bench_peer_gpu.py rebuilds
    assert [m["micro_batch_tokens"] for m in r["modes"]] == [8192, 8192]  # the size measured best on an H200
    p = r["params"]
    assert p["body"] + p["vision"] + p["embedding"] + p["head"] == p["all"]  # the tiny model does not tie them
    for mode in r["modes"]:
        m = mode["median"]
        # Without checkpointing the update runs the "prefix" layout (engine/forward/layouts.py): the group's shared prompt
        # and its image once; with it, each trajectory whole but the shared image encoded once. MFU counts the work
        # done; the workload MFU counts both trajectories' tokens and images.
        assert m["sampled_tokens"] == 2 * 4  # every sample runs to --new-tokens
        assert m["patches"] == 64  # 112 px: an 8 x 8 patch grid, the one image encoded once
        assert m["peak_gib"] is None and m["update_tflops"] > 0
        flops = 6 * (p["body"] * m["sequence_tokens"] + p["head"] * 8 + p["vision"] * m["patches"])
        assert m["update_tflops"] == pytest.approx(flops / m["update"] / 1e12, rel=1e-6)
        assert m["update_mfu"] == pytest.approx(flops / m["update"] / 1e12, rel=1e-6)  # --peak-tflops 1
        workload = 6 * (p["body"] * r["modes"][0]["median"]["sequence_tokens"] + p["head"] * 8 + p["vision"] * 128)
        assert m["workload_mfu"] == pytest.approx(workload / m["update"] / 1e12, rel=1e-6)
    whole, shared = (mode["median"]["sequence_tokens"] for mode in r["modes"])
    prompt = whole // 2 - 4  # whole = 2 x (prompt + 4 new tokens); shared = prompt once + 2 x 4
    assert prompt > 0 and shared == prompt + 2 * 4
    assert "rollout tok/s" in capsys.readouterr().out


def test_make_test_gpu_without_torch_says_so_in_one_line(tmp_path):
    """`make test-gpu` with a Python that has no torch (the lane's GPU_PY) ends with one line saying what to do,
    not with pytest's collection traceback."""
    import subprocess

    no_torch = tmp_path / "python"
    no_torch.write_text("#!/bin/sh\nexit 1\n")  # a Python in which `import torch` fails
    no_torch.chmod(0o755)
    proc = subprocess.run(["make", "-s", "test-gpu", f"GPU_PY={no_torch}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert f"make test-gpu: {no_torch} cannot import torch and pytest" in proc.stderr
