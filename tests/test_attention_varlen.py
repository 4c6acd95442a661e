"""models.attention: packed rows through a variable-length kernel plugged into transformers' attention interface.

CPU (no varlen kernel exists there): the kernel is replaced by a reference written with per-sequence sdpa and
the signature of torch 2.13's varlen_attn, so everything around it is tested for real:
- cu_seqlens from row-0 positions (hand-worked example), derived once per forward, not once per layer;
- the tiny Qwen2.5-VL switched to the varlen implementation scores a packed row [1, T] (no mask: transformers'
  flash mask function returns None) exactly as each trajectory alone, for trajectories with images;
- the vision tower makes ONE kernel call per block (its windows and images as cu_seqlens), the text ONE per layer;
- sampling batches (a 2-D padding mask, a KV cache) take the sdpa fallback in the text layers: generate() gives
  the same tokens and log-probs as with plain sdpa.
GPU (marked gpu, skipped without CUDA): torch's real varlen_attn, bf16, packed row == padded batch.
And the CPU's sdpa (a model loaded with "sdpa" on the CPU runs models.attention.sdpa_gqa_forward): equal to
transformers' sdpa_attention_forward with no mask, a boolean mask, an additive decoding mask, a longer mask.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_attention_varlen.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models.attention as A
from models.attention import cu_seqlens_from_positions
from engine.packing import pack_row, row_logps
from engine.rollout import finish
from models.generation import generate
from engine.trajectory import Trajectory
from tests.engine_helpers import gen_args, load_tiny, make_prompt, request


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch 2.13's varlen_attn contract ([T, H, D] in and out), one sdpa call per sequence."""
    reference_varlen.calls += 1
    out = []
    for i in range(len(cu_q) - 1):
        qs, ks, vs = (t[c[i]:c[i + 1]].transpose(0, 1) for t, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=window_size == (-1, 0), scale=scale,
                                                  enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(out)


reference_varlen.calls = 0


@pytest.fixture()
def varlen_vlm(monkeypatch):
    monkeypatch.setattr(A, "_varlen_kernel", lambda: (reference_varlen, "torch"))
    vlm = load_tiny()
    A.set_attention(vlm.model, A.VARLEN)
    assert A.uses_varlen(vlm.model)
    return vlm


def _trajs(vlm):
    out = []
    for i, (size, n) in enumerate([((90, 60), 7), ((56, 112), 12), ((84, 84), 3)]):
        traj = Trajectory.start(make_prompt(vlm, size, "What colour?", i), i)
        traj.append_sampled(list(range(40 + i, 40 + i + n)), [0.0] * n)
        traj.stop = "length"
        finish(traj, vlm)
        out.append(traj)
    return out


def test_cu_seqlens_from_positions():
    cu, longest = cu_seqlens_from_positions(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3]))
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4


def test_packed_row_through_varlen_equals_alone(varlen_vlm, monkeypatch):
    trajs = _trajs(varlen_vlm)
    derived = []  # cu_seqlens from the row's positions: once per forward (one host sync), not once per layer

    def counting(pos):
        derived.append(pos)
        return cu_seqlens_from_positions(pos)
    monkeypatch.setattr(A, "cu_seqlens_from_positions", counting)
    sdpa = load_tiny()  # the same weights with plain sdpa: each trajectory alone
    with torch.no_grad():
        alone = [row_logps(sdpa.model, pack_row(trajs, [i]))[0] for i in range(len(trajs))]
        reference_varlen.calls = 0
        logp_K, _ = row_logps(varlen_vlm.model, pack_row(trajs, [0, 1, 2]))  # the packed layout: varlen is on
    cfg = varlen_vlm.model.config
    # one call per vision block for all three images and their windows, one per text layer for the whole row
    assert reference_varlen.calls == cfg.vision_config.depth + cfg.text_config.num_hidden_layers
    assert len(derived) == 1
    row = pack_row(trajs, [0, 1, 2])
    for i in range(len(trajs)):
        torch.testing.assert_close(logp_K[row.seq_K == i], alone[i], rtol=0, atol=1e-5)


def test_sampling_takes_the_sdpa_fallback(varlen_vlm):
    prompts = [make_prompt(varlen_vlm, size, q, i) for i, (size, q) in enumerate([((90, 60), "What colour?"),
                                                                                   ((56, 112), "How many?")])]
    params = gen_args(max_new_tokens=6, temperature=0)  # greedy: any attention difference shows
    outs = []
    depth = varlen_vlm.model.config.vision_config.depth
    for vlm, kernel_calls in ((varlen_vlm, depth), (load_tiny(), 0)):
        reference_varlen.calls = 0
        outs.append(generate(vlm.model, [request(p, vlm) for p in prompts], **params, pad_id=vlm.family.pad_id,
                             expand=2))
        # only the vision tower (once per block, in the prefill) reaches the kernel: the text's left-padded
        # prefill and its cached decoding steps take the sdpa fallback
        assert reference_varlen.calls == kernel_calls
    assert [o.tokens for o in outs[0]] == [o.tokens for o in outs[1]]
    for a, b in zip(*outs):
        torch.testing.assert_close(torch.tensor(a.logps), torch.tensor(b.logps), rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's varlen_attn has no CPU kernel")
def test_real_varlen_kernel_on_gpu():
    vlm = load_tiny()
    trajs = _trajs(vlm)
    model = vlm.model.to("cuda", torch.bfloat16)
    row = pack_row(trajs, [0, 1, 2])
    with torch.no_grad():
        padded, _ = row_logps(model, row, layout="padded")
        A.set_attention(model, A.VARLEN)
        packed, _ = row_logps(model, row)
    torch.testing.assert_close(packed.float(), padded.float(), rtol=0, atol=5e-2)  # bf16 kernels differ in rounding


@pytest.mark.parametrize("case", ["causal", "bool-mask", "additive-mask-decoding", "longer-mask"])
def test_sdpa_gqa_equals_transformers_sdpa(case):
    """models.attention.sdpa_gqa_forward (what a CPU model loaded with sdpa runs) == transformers' own
    sdpa_attention_forward, which repeats K and V when there is a mask: 4 query heads on 2 kv heads."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Layer(torch.nn.Module):
        is_causal, num_key_value_groups = True, 2

    g = torch.Generator().manual_seed(0)
    Q = 1 if case == "additive-mask-decoding" else 7
    q, k, v = (torch.randn(3, h, n, 16, generator=g) for h, n in ((4, Q), (2, 9), (2, 9)))
    keep = torch.ones(3, 1, Q, 9, dtype=torch.bool).tril(9 - Q)
    keep[0, ..., :3] = False  # a left-padded row
    mask = {"causal": None, "bool-mask": keep,
            "additive-mask-decoding": torch.zeros(3, 1, Q, 9).masked_fill(~keep, torch.finfo(torch.float32).min),
            "longer-mask": torch.cat([keep, torch.zeros(3, 1, Q, 4, dtype=torch.bool)], -1)}[case]
    ours, _ = A.sdpa_gqa_forward(Layer(), q, k, v, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Layer(), q, k, v, None if mask is None else mask[..., :9], scaling=0.25)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_cpu_sdpa_loads_as_sdpa_gqa():
    vlm = load_tiny()
    assert vlm.model.config._attn_implementation == A.SDPA_GQA
    assert vlm.model.config.text_config._attn_implementation == A.SDPA_GQA
    assert not A.uses_varlen(vlm.model)


def test_varlen_on_a_cpu_is_refused_with_the_fix():
    from models.load import load_vlm
    from models.tiny import tiny_model_dir

    with pytest.raises(ValueError, match="varlen.*CUDA only.*use sdpa"):
        load_vlm(tiny_model_dir("qwen2_5_vl"), attn_implementation="varlen", device="cpu")
