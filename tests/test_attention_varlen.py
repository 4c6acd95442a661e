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
from engine.forward.packing import pack_row, row_logps
from engine.rollout.rollout import finish
from models.generation import generate
from engine.rollout.trajectory import Trajectory
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's varlen_attn has no CPU kernel")
def test_auto_attention_on_gpu_is_varlen_and_its_prefix_layout_matches():
    """The default (model.attn_implementation auto) on a GPU with bf16 weights loads the varlen kernel; a row of
    samples sharing prompts then takes the "prefix" layout (the prompts' images through the real kernel, the rest
    through the fallback's CUDA sdpa) and matches the padded batch under sdpa."""
    from engine.forward.layouts import default_layout
    from models.load import load_vlm
    from models.tiny import tiny_model_dir

    vlm = load_vlm(tiny_model_dir("qwen2_5_vl"), dtype="bfloat16", device="cuda")
    assert vlm.model.config._attn_implementation == A.VARLEN
    trajs = _group_trajs(vlm)
    row = pack_row(trajs, list(range(len(trajs))))
    assert default_layout(vlm.model, row) == "prefix"
    with torch.no_grad():
        prefix, _ = row_logps(vlm.model, row)
        A.set_attention(vlm.model, "sdpa")
        padded, _ = row_logps(vlm.model, row, layout="padded")
    torch.testing.assert_close(prefix.float(), padded.float(), rtol=0, atol=5e-2)


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


def _written_out(q, k, v, keep_BQK, scale):
    """Attention by hand: the kv heads repeated to their query heads, softmax over the kept keys."""
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)) * scale
    return (scores.masked_fill(~keep_BQK[:, None], float("-inf")).softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("case", ["causal", "padded-prompts", "continuation-on-cache", "decoding"])
def test_sdpa_fallback_equals_attention_written_out(case):
    """The varlen model's ordinary batches (the sampler's, the "prefix" layout's prompts and continuations): no
    mask with as many queries as keys is the kernel's own causal flag; a 2-D padding mask with fewer queries than
    keys (a continuation on its prompt's cache) keeps each query's causal window right-aligned; 4 query heads on 2
    kv heads. Compared on the queries that see some key (a left-padded row's pad queries are never read)."""
    class Layer(torch.nn.Module):
        is_causal = True

    g = torch.Generator().manual_seed(0)
    Q, K = {"causal": (9, 9), "padded-prompts": (9, 9), "continuation-on-cache": (5, 9), "decoding": (1, 9)}[case]
    q, k, v = (torch.randn(3, h, n, 16, generator=g) for h, n in ((4, Q), (2, K), (2, K)))
    pad_BK = torch.ones(3, K, dtype=torch.long)
    if case != "causal":
        pad_BK[0, :3] = 0  # a left-padded prompt
        pad_BK[1, 2:4] = 0  # a prompt's right padding before its continuation (the "prefix" layout's keys)
    keep_BQK = torch.ones(Q, K, dtype=torch.bool).tril(K - Q)[None] & pad_BK.bool()[:, None, :]
    ours, _ = A.varlen_attention_forward(Layer(), q, k, v, None if case == "causal" else pad_BK, scaling=0.25)
    read_BQ = keep_BQK.any(-1)
    torch.testing.assert_close(ours[read_BQ], _written_out(q, k, v, keep_BQK, 0.25)[read_BQ], rtol=0, atol=1e-5)


def _group_trajs(vlm):
    g = torch.Generator().manual_seed(3)
    prompts = [make_prompt(vlm, (90, 60), "What colour?", 20), make_prompt(vlm, (56, 112), "How many?", 21)]
    out = []
    for k, (p, n) in enumerate([(0, 6), (0, 9), (0, 4), (1, 7), (1, 5)]):
        traj = Trajectory.start(prompts[p], p)
        traj.append_sampled(torch.randint(40, 200, (n,), generator=g).tolist(), [0.0] * n)
        traj.stop = "length"
        finish(traj, vlm)
        out.append(traj)
    return out


def test_shared_prompts_under_varlen_run_once_and_equal_alone(varlen_vlm):
    """Samples sharing prompts under the varlen kernel take the "prefix" layout by default (the fastest update and
    reference forward measured on a GPU): the prompts' images through the kernel, one call per vision block, the
    prompts and their samples through the sdpa fallback. Log-probs == each alone under plain sdpa (1e-5) and
    gradients == the plain sdpa padded batch's (rtol 1e-4)."""
    from engine.forward.layouts import default_layout

    trajs = _group_trajs(varlen_vlm)
    row = pack_row(trajs, list(range(len(trajs))))
    assert default_layout(varlen_vlm.model, row) == "prefix"
    sdpa = load_tiny()
    with torch.no_grad():
        alone = [row_logps(sdpa.model, pack_row(trajs, [i]))[0] for i in range(len(trajs))]
    grads = {}
    for name, model, layout in (("varlen", varlen_vlm.model, None), ("sdpa", sdpa.model, "padded")):
        reference_varlen.calls = 0
        logp_K, _ = row_logps(model, row, layout=layout)
        if name == "varlen":  # the two prompt images once: one call per vision block, none in the text layers
            assert reference_varlen.calls == model.config.vision_config.depth
            for i in range(len(trajs)):
                torch.testing.assert_close(logp_K.detach()[row.seq_K == i], alone[i], rtol=0, atol=1e-5)
        (logp_K * torch.linspace(-1, 1, logp_K.numel())).sum().backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["varlen"].keys() == grads["sdpa"].keys() and any("visual" in n for n in grads["varlen"])
    for n, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["varlen"][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_auto_attention_resolves_to_the_measured_faster_kernel(monkeypatch):
    """model.attn_implementation "auto": varlen where its kernel runs (a CUDA device, bf16 / fp16 weights),
    sdpa otherwise; explicit names pass through."""
    from models.load import resolve_attention

    assert resolve_attention("auto", "cpu", "float32") == "sdpa"
    assert resolve_attention("auto", "cpu", "bfloat16") == "sdpa"
    monkeypatch.setattr("models.load.varlen_available", lambda device: torch.device(device).type == "cuda")
    assert resolve_attention("auto", "cuda", "bfloat16") == "varlen"
    assert resolve_attention("auto", "cuda:0", "float16") == "varlen"
    assert resolve_attention("auto", "cuda", "float32") == "sdpa"  # flash kernels take half precision only
    assert resolve_attention("eager", "cuda", "bfloat16") == "eager"
    monkeypatch.setattr("models.load.varlen_available", lambda device: False)  # e.g. a pre-Ampere GPU
    assert resolve_attention("auto", "cuda", "bfloat16") == "sdpa"
    assert not A.varlen_available("cpu")
