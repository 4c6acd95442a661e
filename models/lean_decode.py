"""The native sampler's dynamic decoding step for Qwen2-VL / Qwen2.5-VL without transformers' module plumbing.

    step = lean_step_for(model)          # None where it does not apply: then call the model as usual
    logits_BV = step(tok_B, pos_3B1, cache, mask_B11K)

On the CPU a decoding step of the tiny model (16 rows, 4 layers) is launch-bound: ~20 % of its time is the Python
around the arithmetic (module calls, keyword plumbing, mask and output objects), not the arithmetic. This step
runs the same tensor operations in the same order on the same weights as the model's forward, so its logits are
bitwise the model's (tests/test_lean_decode.py checks tokens and log-probs of whole generate calls). Measured:
1.91 -> 1.50 ms per decoding step (tiny Qwen2.5-VL, 16 rows, one CPU thread, 5 x 30 steps each).

It is written for one case and checks for it (`lean_step_for`), the CPU sampler's:
- a Qwen2-VL or Qwen2.5-VL model of transformers' own classes, every layer full attention, in eval mode;
- plain nn.Linear projections (no LoRA wrapper) with biases where Qwen2 has them, no forward hooks anywhere
  (FSDP, profilers, ...);
- on the CPU, its text attention models/attention.py's SDPA_GQA (what a model loaded with sdpa on a CPU runs),
  whose call this step repeats.
Anything else gets None, and generate() calls the model. A GPU decodes through models/decode_graph.py instead.
Shapes: B rows, K cached keys, V vocab, D head dim.
"""

from __future__ import annotations

from typing import Callable

import sys

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _module

from models.attention import SDPA_GQA

_MODELS = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
_LAYERS = ("Qwen2VLDecoderLayer", "Qwen2_5_VLDecoderLayer")


def _plain_linear(m, bias: bool = False) -> bool:
    """An nn.Linear itself (not a subclass such as LoRA's), with a bias exactly where Qwen2 has one."""
    return type(m) is torch.nn.Linear and (m.bias is not None) == bias


def _hooked(model) -> bool:
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def lean_step_for(model) -> Callable | None:
    """The step for `model`, or None where it would not be the model's own forward (see the module docstring)."""
    if type(model).__name__ not in _MODELS or model.training or model.device.type != "cpu":
        return None
    text = model.config.text_config
    if text._attn_implementation != SDPA_GQA or any(t != "full_attention" for t in text.layer_types or []):
        return None
    lm = model.model.language_model
    for layer in lm.layers:
        a, m = layer.self_attn, layer.mlp
        if type(layer).__name__ not in _LAYERS or not all(
                [_plain_linear(p, bias=True) for p in (a.q_proj, a.k_proj, a.v_proj)]
                + [_plain_linear(p) for p in (a.o_proj, m.gate_proj, m.up_proj, m.down_proj)]):
            return None
    if not _plain_linear(model.lm_head) or _hooked(model):
        return None
    rotary = sys.modules[type(lm.layers[0]).__module__].apply_rotary_pos_emb  # the model file's own function

    def step(tok_B: torch.Tensor, pos_3B1: torch.Tensor, cache, mask_B11K: torch.Tensor | None) -> torch.Tensor:
        x = lm.embed_tokens(tok_B[:, None])
        cos, sin = lm.rotary_emb(x, pos_3B1)
        B = x.shape[0]
        for i, layer in enumerate(lm.layers):
            a, mlp = layer.self_attn, layer.mlp
            h = layer.input_layernorm.forward(x)  # .forward: the module's own code, without its call machinery
            q, k, v = (F.linear(h, p.weight, p.bias).view(B, 1, -1, a.head_dim).transpose(1, 2)
                       for p in (a.q_proj, a.k_proj, a.v_proj))
            q, k = rotary(q, k, cos, sin)
            k, v = cache.update(k, v, i)
            mask = None if mask_B11K is None else mask_B11K[:, :, :, :k.shape[-2]]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=a.scaling,
                                               enable_gqa=k.shape[1] != q.shape[1])
            x = x + F.linear(o.transpose(1, 2).contiguous().reshape(B, 1, -1).contiguous(), a.o_proj.weight)
            h = layer.post_attention_layernorm.forward(x)
            x = x + F.linear(mlp.act_fn(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight),
                             mlp.down_proj.weight)
        return F.linear(lm.norm.forward(x)[:, -1], model.lm_head.weight)

    return step
