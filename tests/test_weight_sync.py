"""engine/rollout/weight_sync.py: the policy's weights for the vLLM sampler, one FSDP2 parameter group at a time.

- Groups (engine.runtime.distributed.parameter_groups): each vision block, the rest of the vision tower, each
  decoder layer, then the rest; a layer's q/k/v and gate/up (and their LoRA adapters) in one group; every
  parameter in exactly one; the embeddings and LM head last.
- One process: the stream is the model's own state dict, name for name, the parameters themselves (no copy);
  under LoRA, the merged state dict (engine.runtime.lora.merged_state_dict on the whole model), exactly.
- Two processes (torchrun, FSDP2 over gloo; tests/dist_sync_worker.py): the pushed tensors equal the gathered full
  state dict (merged under LoRA) on rank 0, every rank streams the same names, and the bytes the sync holds at
  once, counted tensor by tensor, never exceed the largest group's (its full tensors, plus under LoRA its merged
  copies), a quarter of the model: never a whole copy.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_weight_sync.py
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.rollout.weight_sync import policy_weights
from engine.runtime import distributed as D
from engine.runtime.lora import merged_state_dict
from tests.dist_sync_worker import lora_model
from tests.engine_helpers import load_tiny

ROOT = Path(__file__).resolve().parent.parent


def test_groups_follow_fsdp_units_and_keep_fused_projections_together():
    model = load_tiny().model
    groups = D.parameter_groups(model)
    names = [n for g in groups for n, _ in g]
    assert sorted(names) == sorted(model.state_dict())  # every parameter once (this model ties nothing)
    config = model.config
    assert len(groups) == config.vision_config.depth + 1 + config.text_config.num_hidden_layers + 1
    layer_of = lambda n: re.search(r"\.(blocks|layers)\.(\d+)\.", n)  # noqa: E731
    for g in groups:
        units = {(m.group(1), m.group(2)) if (m := layer_of(n)) else None for n, _ in g}
        assert len(units) == 1, units  # one block or layer per group, or none (the rest)
    first_layer = next(g for g in groups if "layers.0." in g[0][0])
    leaves = {n.split("layers.0.")[1] for n, _ in first_layer}
    assert {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight"} <= leaves
    assert [n for n, _ in groups[-1]] == ["model.language_model.embed_tokens.weight",
                                          "model.language_model.norm.weight", "lm_head.weight"]


def test_one_process_streams_the_state_dict_without_copies():
    model = load_tiny().model
    state = model.state_dict()
    pushed = list(policy_weights(model))
    assert [n for n, _ in pushed] == [n for g in D.parameter_groups(model) for n, _ in g]
    assert {n for n, _ in pushed} == set(state)
    for name, t in pushed:
        assert t.data_ptr() == state[name].data_ptr() and not t.requires_grad  # the parameter itself, detached


def test_one_process_lora_streams_the_merged_weights():
    model = lora_model()
    pushed = dict(policy_weights(model))
    expected = merged_state_dict(model)
    assert pushed.keys() == expected.keys()
    assert not any("lora_" in n or "base_layer" in n for n in pushed)
    for name, t in pushed.items():
        assert torch.equal(t, expected[name]), name
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    base = model.get_base_model().model.language_model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.equal(pushed[q], base)  # lora_B is not zero: the merge moved it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "tests/dist_sync_worker.py", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_fsdp_sync_equals_the_full_state_and_holds_one_group(two_ranks, kind):
    r0, r1 = two_ranks[0][kind], two_ranks[1][kind]
    assert r0["sharded"] and r1["sharded"]
    assert r0["names"] == r1["names"]  # every rank gathers the same groups in the same order
    assert sorted(r0["names"]) == r0["reference_keys"]  # every weight, merged names under LoRA
    assert r0["max_abs_diff"] == 0.0  # the same bits as the gathered (and merged) full state dict
    for r in (r0, r1):
        print(f"{kind}: sync peak {r['peak_bytes']} B, largest group {r['largest_group_bytes']} B, "
              f"model {r['model_bytes']} B")
        assert 0 < r["peak_bytes"] <= r["largest_group_bytes"]
        assert r["largest_group_bytes"] < r["model_bytes"] / 4  # a group is far from the whole model
