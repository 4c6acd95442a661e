"""engine.forward.logprobs: log-probs and entropy computed chunk by chunk equal the one-shot formula, with bounded memory.

- token_logps with chunks (fp32, temperature 0.7, with a bias, K not a multiple of the chunk) == the plain
  [K, V] formula: log-probs, entropy and hidden-state gradients (1e-6), head weight and bias gradients (1e-5:
  the same sum over tokens in another order); bf16 weights within bf16 rounding;
- no tensor of K × V elements is ever made on the chunked path (forward AND backward), while the plain path
  makes one: recorded with a dispatch mode that sees every op's output;
- through the tiny model: row_logps with chunk_tokens=5 == chunk_tokens=0 (log-probs and every parameter's
  gradient).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_engine_logprobs.py
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.forward.logprobs import token_logps
from engine.forward.packing import pack_row, row_logps
from engine.rollout.rollout import finish
from engine.rollout.trajectory import Trajectory
from tests.engine_helpers import load_tiny, make_prompt

K, H, V = 403, 16, 300


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(K, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(dtype).requires_grad_()
    bias = torch.randn(V, generator=g).to(dtype).requires_grad_()
    tok = torch.randint(0, V, (K,), generator=g)
    grad_out = torch.randn(K, generator=g)  # an arbitrary upstream gradient, not just ones
    return hidden, weight, bias, tok, grad_out


def _run(chunk, dtype=torch.float32):
    hidden, weight, bias, tok, grad_out = _inputs(dtype)
    logp, ent = token_logps(hidden, weight, bias, tok, temperature=0.7, with_entropy=True, chunk_tokens=chunk)
    (logp * grad_out).sum().backward()
    return logp.detach(), ent, hidden.grad, weight.grad, bias.grad


def test_chunked_equals_plain_fp32():
    plain, chunked = _run(0), _run(16)
    for a, b in zip(plain[:3], chunked[:3]):  # log-probs, entropy, hidden grads: the same sums, per token
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    # weight and bias gradients sum over K tokens in another order (chunk by chunk): fp32 rounding, ~1e-6
    for a, b in zip(plain[3:], chunked[3:]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert chunked[1].requires_grad is False  # entropy is a metric: no gradient through it


@pytest.mark.parametrize("chunk", [0, 16])
def test_entropy_with_gradient_equals_autograd_of_its_formula(chunk):
    # A loss that needs "entropy" gets it with gradient: an arbitrary upstream gradient on BOTH outputs, through
    # token_logps (plain, and chunked with its hand-written backward), equals autograd through the formula
    # H = −Σ softmax(l)·log_softmax(l), l = (h·Wᵀ + b) / T, written independently here.
    hidden, weight, bias, tok, grad_logp = _inputs()
    grad_ent = torch.randn(K, generator=torch.Generator().manual_seed(1))
    logp, ent = token_logps(hidden, weight, bias, tok, temperature=0.7, with_entropy=True, chunk_tokens=chunk,
                            entropy_grad=True)
    ((logp * grad_logp).sum() + (ent * grad_ent).sum()).backward()
    ours = (hidden.grad, weight.grad, bias.grad)
    h, w, b = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
    logq = torch.log_softmax((h @ w.T + b) / 0.7, -1)
    want_ent = -(logq.exp() * logq).sum(-1)
    ((logq.gather(-1, tok[:, None])[:, 0] * grad_logp).sum() + (want_ent * grad_ent).sum()).backward()
    torch.testing.assert_close(ent.detach(), want_ent.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(ours, (h.grad, w.grad, b.grad)):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_equals_plain_bf16():
    plain, chunked = _run(0, torch.bfloat16), _run(16, torch.bfloat16)
    for a, b in zip(plain, chunked):
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk", [0, 16])
def test_memory_bounded_by_chunk(chunk):
    hidden, weight, bias, tok, grad_out = _inputs()
    with _LargestTensor() as seen:
        logp, _ = token_logps(hidden, weight, bias, tok, with_entropy=True, chunk_tokens=chunk)
        (logp * grad_out).sum().backward()
    if chunk:
        assert seen.largest <= max(chunk * V, V * H, K * H)  # a chunk's logits, the weight's or hidden's gradient
    else:
        assert seen.largest >= K * V  # the plain path really materialises the whole [K, V] logits


def test_row_logps_chunked_equals_plain_through_the_model():
    vlm = load_tiny()
    trajs = []
    for i, size in enumerate([(90, 60), (56, 112)]):
        traj = Trajectory.start(make_prompt(vlm, size, "What colour?", i), i)
        traj.append_sampled(list(range(20 + i, 31 + 2 * i)), [0.0] * (11 + i))
        traj.stop = "length"
        finish(traj, vlm)
        trajs.append(traj)
    row = pack_row(trajs, [0, 1])
    results = []
    for chunk in (0, 5):
        vlm.model.zero_grad(set_to_none=True)
        logp, ent = row_logps(vlm.model, row, temperature=0.9, with_entropy=True, chunk_tokens=chunk)
        (logp * torch.linspace(-1, 1, logp.numel())).sum().backward()
        grads = {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), ent, grads))
    (lp0, e0, g0), (lp1, e1, g1) = results
    torch.testing.assert_close(lp1, lp0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(e1, e0, rtol=1e-6, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        # float32 sums in another order (the chunked head): an element's error is ~1e-7 of the tensor's scale, so
        # the absolute tolerance follows the scale (a fixed 1e-6 failed on an AMD EPYC for gradients of size ~5)
        scale = g0[name].abs().max().item()
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6 * max(scale, 1.0), msg=name)
