"""scripts/bench_peer_gpu.py (`make bench-peer-gpu`: TRL's GRPOTrainer on `make bench-gpu`'s workload) on the CPU: what
it reads from ours and refuses, how it sizes TRL's micro-batches, and - where TRL is installed (.venv-peer, built by
scripts/install_peer.sh; skipped elsewhere, saying so) - a whole run on the tiny shape doing the same work as ours
(the same sampled tokens per step, both checkpointing modes, every phase timed). Its GPU figures come from a GPU.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_bench_peer_gpu.py          # TRL part skipped
    OMP_NUM_THREADS=1 .venv-peer/bin/python -m pytest -q tests/test_bench_peer_gpu.py     # all of it
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from scripts.bench_peer_gpu import main, peer_batch, read_ours

NO_TRL = "" if importlib.util.find_spec("trl") else \
    "TRL is not installed here: run under .venv-peer (scripts/install_peer.sh)"


def _ours(tmp_path, **changes):
    ours = {"device": "cpu", "workload": "w", "modes": [],
            "settings": {"arch": "qwen2_5_vl", "shape": "tiny", "prompts": 2, "group": 4, "new_tokens": 8,
                         "side": 112, "kl_beta": 0.04}, **changes}
    path = tmp_path / "ours.json"
    path.write_text(json.dumps(ours))
    return path


def test_reads_the_workload_from_ours_and_refuses_another_card(tmp_path):
    assert read_ours(_ours(tmp_path), "cpu")["settings"]["new_tokens"] == 8
    with pytest.raises(ValueError, match="run `make bench-gpu`"):
        read_ours(tmp_path / "missing.json", "cpu")
    with pytest.raises(ValueError, match="was measured on 'NVIDIA H200', this run is on 'cpu'"):
        read_ours(_ours(tmp_path, device="NVIDIA H200"), "cpu")
    with pytest.raises(ValueError, match=r"no settings \['new_tokens'"):
        read_ours(_ours(tmp_path, settings={"arch": "qwen2_5_vl", "shape": "3b", "prompts": 8, "group": 8}), "cpu")
    with pytest.raises(SystemExit):  # the command line says it in one line (argparse's error), no traceback
        main(["--ours", str(tmp_path / "missing.json"), "--device", "cpu"])


def test_trl_batches_fit_ours_micro_batch_tokens():
    # 8 x 8 sequences of 576 tokens under ours' 8192-token rows: 14 fit a row, 8 is the largest divisor of 64 <= 14
    assert peer_batch({"micro_batch_tokens": 8192}, 576, 64) == 8
    assert peer_batch({"micro_batch_tokens": 16384}, 576, 64) == 16  # 28 fit: 16
    assert peer_batch({"micro_batch_tokens": 100}, 576, 64) == 1  # not even one: one at a time
    assert peer_batch({"micro_batch_tokens": 8192}, 576, 64, requested=32) == 32
    with pytest.raises(ValueError, match="does not divide the 64 sequences"):
        peer_batch({"micro_batch_tokens": 8192}, 576, 64, requested=12)


@pytest.mark.skipif(bool(NO_TRL), reason=NO_TRL)
def test_tiny_shape_runs_the_same_work_as_ours_on_cpu(tmp_path, capsys):
    from scripts.bench_gpu import main as bench_gpu

    ours = tmp_path / "ours.json"
    assert bench_gpu(["--shape", "tiny", "--device", "cpu", "--prompts", "2", "--group", "4", "--new-tokens", "8",
                      "--side", "112", "--steps", "1", "--warmup", "0", "--work", str(tmp_path / "ours"),
                      "--out", str(ours)]) == 0
    out = tmp_path / "peer.json"
    assert main(["--ours", str(ours), "--device", "cpu", "--steps", "1", "--warmup", "1",
                 "--work", str(tmp_path / "peer"), "--out", str(out)]) == 0
    peer, mine = json.loads(out.read_text()), json.loads(ours.read_text())
    assert [m["gradient_checkpointing"] for m in peer["modes"]] == [True, False]
    for theirs, m in zip(peer["modes"], mine["modes"]):
        t = theirs["median"]
        assert t["sampled_tokens"] == m["median"]["sampled_tokens"] == 2 * 4 * 8  # the same work, every token
        assert theirs["batch"] * theirs["accumulation"] == 8
        assert min(t["generate_s"], t["ref_s"], t["update_s"]) > 0 and t["old_s"] == 0  # one update: no old pass
        assert t["step_s"] >= t["score_s"] >= t["generate_s"] + t["ref_s"]
    printed = capsys.readouterr().out
    assert "rollout / generate" in printed and "NOT THE SAME WORK" not in printed
