"""models.lean_decode: the CPU sampler's decoding step without transformers' module plumbing.

- whole generate() calls with the lean step give bitwise the tokens and log-probs of the same calls through the
  model's forward (the step forced off), for Qwen2-VL and Qwen2.5-VL: left-padded prompts of different lengths,
  3 samples each, temperature sampling with top-k and a seeded generator, and greedy;
- the lean step really runs in those calls (once per decoding step after the first draw);
- it stands aside (None) wherever it would not be the model's forward: another family (Qwen3-VL), another attention
  kernel, training mode, a LoRA-wrapped projection, a bias where Qwen2 has none, a forward hook.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_lean_decode.py
"""

from __future__ import annotations

import pytest
import torch

import models.decode_steps as decode_steps
import models.generation as G
import models.lean_decode as L
from models.load import load_vlm
from models.tiny import tiny_model_dir
from tests.engine_helpers import gen_args, make_prompt, request

NEW_TOKENS = 10


def _load(arch: str):
    torch.set_num_threads(1)
    vlm = load_vlm(tiny_model_dir(arch))
    vlm.model.eval()
    return vlm


def _generate(vlm, temperature: float, top_k: int = 0):
    reqs = [request(make_prompt(vlm, size, q, i), vlm) for i, (size, q) in
            enumerate([((90, 60), "What colour?"), ((56, 112), "How many dots are there in the picture?")])]
    g = torch.Generator().manual_seed(7)
    return G.generate(vlm.model, reqs, **gen_args(max_new_tokens=NEW_TOKENS, temperature=temperature, top_k=top_k),
                      pad_id=vlm.family.pad_id, expand=3, generator=g)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("temperature,top_k", [(1.0, 50), (0.0, 0)])
def test_generate_with_the_lean_step_is_bitwise_the_models_forward(arch, temperature, top_k, monkeypatch):
    vlm = _load(arch)
    calls = []
    real = L.lean_step_for(vlm.model)
    assert real is not None

    def counting(model):
        def step(*args):
            calls.append(1)
            return real(*args)
        return step
    monkeypatch.setattr(decode_steps, "lean_step_for", counting)
    lean = _generate(vlm, temperature, top_k)
    assert len(calls) == NEW_TOKENS - 1  # every decoding step after the prefill's draw (no row stops early here)
    monkeypatch.setattr(decode_steps, "lean_step_for", lambda model: None)
    plain = _generate(vlm, temperature, top_k)
    assert [o.tokens for o in lean] == [o.tokens for o in plain]
    assert [o.logps for o in lean] == [o.logps for o in plain]  # floats equal: the same logits bit for bit
    assert len({tuple(o.tokens) for o in lean}) > 1 or temperature == 0  # sampling did draw different samples


def test_the_lean_step_stands_aside_where_it_is_not_the_models_forward():
    vlm = _load("qwen2_5_vl")
    model = vlm.model
    assert L.lean_step_for(model) is not None
    model.train()
    assert L.lean_step_for(model) is None  # training: dropout, checkpointing
    model.eval()
    handle = model.lm_head.register_forward_pre_hook(lambda m, a: None)  # e.g. engine/forward/logprobs.py's head hook
    assert L.lean_step_for(model) is None
    handle.remove()
    usual = model.config.text_config._attn_implementation
    model.config.text_config._attn_implementation = "eager"
    assert L.lean_step_for(model) is None
    model.config.text_config._attn_implementation = usual
    q_proj = model.model.language_model.layers[1].self_attn.q_proj

    class Wrapped(torch.nn.Linear):  # a LoRA-style wrapper: its weight alone is not the projection
        pass
    model.model.language_model.layers[1].self_attn.q_proj = Wrapped(q_proj.in_features, q_proj.out_features)
    assert L.lean_step_for(model) is None
    model.model.language_model.layers[1].self_attn.q_proj = q_proj
    down = model.model.language_model.layers[0].mlp.down_proj
    down.bias = torch.nn.Parameter(torch.zeros(down.out_features))  # a bias the step would not add
    assert L.lean_step_for(model) is None
    down.bias = None
    assert L.lean_step_for(model) is not None
    assert L.lean_step_for(_load("qwen3_vl").model) is None  # another family: q/k norms, deepstack
