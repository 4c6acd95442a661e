"""engine/runtime/distributed.py: the single-process no-ops (hand-checked values), then one real FSDP2 run — torchrun with
2 CPU processes (gloo) running tests/dist_worker.py — compared with the same code in this process on all 4
trajectories: loss, gradient norm, every updated parameter, greedy tokens and their log-probs; and the LoRA run:
loss, the reference (adapters off) = base model, the adapter and the merged export written from gathered shards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.runtime import distributed as D

REPO = Path(__file__).resolve().parent.parent


def test_shard_indices_split_contiguously_and_cover_everything():
    # 10 items over 4 ranks: 10 = 4*2 + 2, so ranks 0-1 take 3 and ranks 2-3 take 2, in order.
    assert [D.shard_indices(10, r, 4) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [D.shard_indices(4, r, 2) for r in range(2)] == [[0, 1], [2, 3]]
    assert [D.shard_indices(1, r, 2) for r in range(2)] == [[0], []]
    assert D.shard_indices(5, 0, 1) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="outside"):
        D.shard_indices(4, 2, 2)


def test_single_process_is_the_identity(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    d = D.init()
    assert (d.rank, d.world, d.is_main) == (0, 1, True) and not D.active()
    assert D.all_reduce_sum(7).item() == 7
    assert D.max_over_ranks(3) == 3
    assert D.all_reduce_metrics({"b": torch.tensor(2.5), "a": 1}) == {"a": 1.0, "b": 2.5}
    model = torch.nn.Linear(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert D.shard_model(model) is model
    assert all(torch.equal(before[k], v) for k, v in D.full_state_dict(model).items())
    with pytest.raises(ValueError, match="torchrun"):
        D.shard_model(model, mixed_precision="bfloat16")
    with pytest.raises(ValueError, match="unknown"):
        D.shard_model(model, mixed_precision="fp8")
    with D.unsharded(model) as m:
        assert m is model
    D.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torchrun_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "tests/dist_worker.py", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, load_file(out / "state.safetensors"), out


@pytest.fixture(scope="module")
def reference():
    from tests.dist_worker import run_full

    assert not D.active()
    return run_full(D.Dist())


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory):
    from tests.dist_worker import run_lora

    out = tmp_path_factory.mktemp("lora_ref")
    return run_lora(D.Dist(), out), out


@pytest.mark.slow
def test_fsdp_step_equals_single_process(torchrun_result, reference):
    (r0, r1), state, _ = torchrun_result
    ref, ref_state, initial = reference
    assert (r0["world"], r1["world"], ref["world"]) == (2, 2, 1)
    # Units: each vision block, the vision tower itself, each decoder layer, the HF model as root ("").
    assert r0["fsdp_units"] == ["", "model.visual", "model.visual.blocks.0", "model.visual.blocks.1"] + [
        f"model.language_model.layers.{i}" for i in range(4)]
    assert ref["fsdp_units"] == []  # one process: nothing sharded
    # The packing really differs by rank: rank 1 ran one zero-weight padding row to match rank 0's two.
    assert (r0["local_rows"], r1["local_rows"], r0["num_rows"], r1["num_rows"]) == (2, 1, 2, 2)
    assert r0["num_tokens"] == r1["num_tokens"] == ref["num_tokens"] > 0  # the all-reduced global count
    for r in (r0, r1):
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        # Catches averaged (instead of summed) gradients and a per-shard norm: both change the norm.
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    assert r0["rows_mean"] == 1.5  # all_reduce_metrics: mean of 2 and 1
    assert ref["grad_norm"] > 1.0  # so clipping was active in both runs

    assert r0["optimizer_reloaded"] and r1["optimizer_reloaded"] and ref["optimizer_reloaded"]
    assert r0["reference_equals_policy"] and r1["reference_equals_policy"] and ref["reference_equals_policy"]
    assert state.keys() == ref_state.keys()  # parameters, and Adam's exp_avg by parameter name
    assert sum(k.startswith("exp_avg:") for k in state) == len(initial)  # every parameter trains
    worst = max((state[k] - ref_state[k]).abs().max().item() for k in state)
    assert worst < 1e-5, worst
    # ...and the step moved them: Adam's first step is about lr (1e-3) per element with a gradient.
    for k in ("lm_head.weight", "model.visual.blocks.0.attn.qkv.weight",
              "model.language_model.layers.3.self_attn.q_proj.weight"):
        assert (state[k] - initial[k]).abs().max() > 5e-4, k


@pytest.mark.slow
def test_generate_on_sharded_model_matches_single_process(torchrun_result, reference):
    (r0, r1), _, _ = torchrun_result
    ref = reference[0]
    for r in (r0, r1):
        for i, out in r["greedy"].items():
            want = ref["greedy"][int(i)]
            assert out["tokens"] == want["tokens"]
            assert out["logps"] == pytest.approx(want["logps"], abs=1e-5)
    # inside unsharded() (before the step): rank 0 made 4 decode steps, rank 1 only 2, without a hang
    for r in (r0, r1):
        for i, out in r["greedy_unsharded"].items():
            want = ref["greedy_unsharded"][int(i)]
            n = len(out["tokens"])
            assert n == (4 if r is r0 else 2)
            assert out["tokens"] == want["tokens"][:n]
            assert out["logps"] == pytest.approx(want["logps"][:n], abs=1e-5)


@pytest.mark.slow
def test_all_reduce_metrics_refuses_different_names(torchrun_result):
    (r0, r1), _, _ = torchrun_result
    assert r0["metric_names_checked"] and r1["metric_names_checked"]
    assert r0["gathered"] == r1["gathered"] == [{"rank": 0}, {"rank": 1}]  # all_gather_objects, rank order


@pytest.mark.slow
def test_bf16_mixed_precision_runs_and_stays_close(torchrun_result):
    (r0, r1), _, _ = torchrun_result
    fp32, mp = r0["loss"], r0["mixed_precision"]
    assert mp["loss"] == r1["mixed_precision"]["loss"]
    assert 0 < abs(mp["loss"] - fp32) < 0.05  # bf16 compute really ran, and computed the same function
    assert mp["param_dtype"] == mp["grad_dtype"] == "torch.float32"  # sharded master weights, fp32 reduction


@pytest.mark.slow
def test_fsdp_lora_step_reference_and_exports(torchrun_result, lora_reference):
    (r0, r1), _, out = torchrun_result
    ref, ref_out = lora_reference
    for r in (r0["lora"], r1["lora"]):
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        assert r["off_equals_base"]  # adapters off under FSDP = the base model, bit for bit
        assert r["on_minus_base"] > 1e-2  # and the step did change the adapted model
    assert ref["off_equals_base"] and ref["on_minus_base"] > 1e-2
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        got, want = load_file(out / name), load_file(ref_out / name)
        assert got.keys() == want.keys(), name
        assert max((got[k] - want[k]).abs().max().item() for k in got) < 1e-5, name
    adapter = load_file(out / "adapter/adapter_model.safetensors")
    assert any(".lora_B." in k and v.abs().max() > 1e-3 for k, v in adapter.items())  # B moved off 0
    config = json.loads((out / "adapter/adapter_config.json").read_text())
    assert config["auto_mapping"]["base_model_class"] == "Qwen2_5_VLForConditionalGeneration"
    merged = json.loads((out / "merged/config.json").read_text())
    assert merged["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
