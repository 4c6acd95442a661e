"""Per-token log-probs (and entropy) from the LM head, a bounded number of tokens at a time.

    with head_logps(model, keep_N, tok_K, temperature=1.0, chunk_tokens=2048) as out:
        model(input_ids=..., logits_to_keep=0, ...)      # the head sees no positions: no [T, V] logits
    logp_K, entropy_K = out.logp_K, out.entropy_K

A forward pre-hook on the model's output embedding (the LM head) takes the hidden states the head would have
turned into logits, keeps the positions `keep_N` indexes (flattened over batch × sequence), and computes log p of
`tok_K` there under softmax(logits / temperature). It runs inside the model's forward, so FSDP2 has the head's
weight gathered, and the model itself computes logits for zero positions.

Memory: with Qwen's vocabulary (151,936 rows) the fp32 logits of 16k tokens are ~10 GB, and autograd keeps them
(and their softmax) for the backward. `_ChunkedLogp` computes `chunk_tokens` rows of logits at a time in the
forward and recomputes them in the backward from the saved hidden states, so peak memory is ~chunk × V
floats whatever the number of tokens; its gradients equal autograd's through the unchunked formula
(tests/test_engine_logprobs.py). chunk_tokens ≤ 0, or K ≤ chunk_tokens: the plain autograd formula.
Entropy carries gradient only when asked (`entropy_grad`, a loss that declares it needs "entropy"): on the chunked
path its backward is recomputed per chunk too, ∂H/∂l = −p·(l − Σ p·l), so the memory bound holds for it as well.
Shapes: K kept tokens, H hidden, V vocab, C tokens in a chunk.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class HeadLogps:
    logp_K: torch.Tensor | None = None
    entropy_K: torch.Tensor | None = None


def _logits(hidden_CH, weight_VH, bias_V, temperature: float) -> torch.Tensor:
    logits_CV = F.linear(hidden_CH, weight_VH, bias_V).float()
    return logits_CV / temperature if temperature != 1.0 else logits_CV


def _entropy(logits_CV: torch.Tensor, logz_C: torch.Tensor) -> torch.Tensor:
    return logz_C - (torch.softmax(logits_CV, -1) * logits_CV).sum(-1)


def plain_logps(hidden_KH, weight_VH, bias_V, tok_K, *, temperature: float, with_entropy: bool,
                entropy_grad: bool = False):
    """The reference formula: one [K, V] logits tensor, autograd through it (and through the entropy when
    `entropy_grad`)."""
    logits_KV = _logits(hidden_KH, weight_VH, bias_V, temperature)
    logz_K = torch.logsumexp(logits_KV, -1)
    logp_K = logits_KV.gather(-1, tok_K[:, None])[:, 0] - logz_K
    entropy_K = None
    if with_entropy and entropy_grad:
        entropy_K = _entropy(logits_KV, logz_K)
    elif with_entropy:
        with torch.no_grad():
            entropy_K = _entropy(logits_KV.detach(), logz_K.detach())
    return logp_K, entropy_K


class _ChunkedLogp(torch.autograd.Function):
    """(logp_K, entropy_K) with logits recomputed chunk by chunk in the backward instead of stored."""

    @staticmethod
    def forward(ctx, hidden_KH, weight_VH, bias_V, tok_K, temperature: float, chunk: int, entropy_grad: bool):
        logp, logz, entropy = [], [], []
        for s in range(0, hidden_KH.shape[0], chunk):
            logits_CV = _logits(hidden_KH[s:s + chunk], weight_VH, bias_V, temperature)
            z_C = torch.logsumexp(logits_CV, -1)
            logp.append(logits_CV.gather(-1, tok_K[s:s + chunk, None])[:, 0] - z_C)
            logz.append(z_C)
            entropy.append(_entropy(logits_CV, z_C))
        ctx.save_for_backward(hidden_KH, weight_VH, bias_V, tok_K, torch.cat(logz))
        ctx.temperature, ctx.chunk, ctx.entropy_grad = temperature, chunk, entropy_grad
        entropy_K = torch.cat(entropy)
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy_K)
        return torch.cat(logp), entropy_K

    @staticmethod
    def backward(ctx, grad_K, grad_entropy_K):
        hidden_KH, weight_VH, bias_V, tok_K, logz_K = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden_KH) if need_h else None
        grad_w = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device) if need_w else None
        grad_b = torch.zeros(bias_V.shape, dtype=torch.float32, device=bias_V.device) if need_b else None
        for s in range(0, hidden_KH.shape[0], ctx.chunk):
            h_CH = hidden_KH[s:s + ctx.chunk]
            logits_CV = _logits(h_CH, weight_VH, bias_V, ctx.temperature)
            # d logp / d logits = onehot(token) − softmax, times the incoming gradient (and 1/temperature)
            p_CV = torch.exp(logits_CV - logz_K[s:s + ctx.chunk, None])
            g_CV = p_CV * -grad_K[s:s + ctx.chunk, None]
            g_CV.scatter_add_(-1, tok_K[s:s + ctx.chunk, None], grad_K[s:s + ctx.chunk, None])
            if ctx.entropy_grad and grad_entropy_K is not None:  # d H / d logits = −p·(l − Σ p·l)
                mean_C = (p_CV * logits_CV).sum(-1, keepdim=True)
                g_CV -= p_CV * (logits_CV - mean_C) * grad_entropy_K[s:s + ctx.chunk, None]
            if ctx.temperature != 1.0:
                g_CV.div_(ctx.temperature)
            g_CV = g_CV.to(weight_VH.dtype)  # as autograd casts the gradient back to the logits' dtype
            if need_h:
                grad_h[s:s + ctx.chunk] = g_CV @ weight_VH
            if need_w:
                grad_w += g_CV.T @ h_CH
            if need_b:
                grad_b += g_CV.sum(0)
        grad_w = grad_w.to(weight_VH.dtype) if need_w else None
        grad_b = grad_b.to(bias_V.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def token_logps(hidden_KH, weight_VH, bias_V, tok_K, *, temperature: float = 1.0, with_entropy: bool = False,
                chunk_tokens: int = 0, entropy_grad: bool = False):
    """(logp_K, entropy_K or None) of `tok_K` under softmax(head(hidden) / temperature); the entropy carries
    gradient only with `entropy_grad`. Peak logits memory ~ chunk_tokens × V when K > chunk_tokens > 0."""
    if chunk_tokens <= 0 or hidden_KH.shape[0] <= chunk_tokens:
        return plain_logps(hidden_KH, weight_VH, bias_V, tok_K, temperature=temperature, with_entropy=with_entropy,
                           entropy_grad=entropy_grad)
    logp_K, entropy_K = _ChunkedLogp.apply(hidden_KH, weight_VH, bias_V, tok_K, temperature, chunk_tokens,
                                           with_entropy and entropy_grad)
    return logp_K, entropy_K if with_entropy else None


@contextmanager
def head_logps(model, keep_N: torch.Tensor, tok_K: torch.Tensor, *, temperature: float = 1.0,
               with_entropy: bool = False, chunk_tokens: int = 0, calls: int = 1, entropy_grad: bool = False):
    """Within the block, the model's forward computes log-probs at the flattened positions `keep_N` of the hidden
    states its LM head receives (call the model with logits_to_keep=0) and hands the head no positions. With
    calls = n, the block runs n forwards (a shared prefix, then the suffixes): `keep_N` indexes their hidden
    states flattened and concatenated in call order, and the log-probs are computed in the last one."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):  # e.g. a LoRA-wrapped head: its weight alone is not the head
        raise ValueError(f"log-probs need a plain nn.Linear LM head, got {type(head).__name__}: "
                         "leave the output embedding out of LoRA's targets")
    out = HeadLogps()
    seen: list[torch.Tensor] = []

    def pre_hook(module, args):
        seen.append(args[0].reshape(-1, args[0].shape[-1]))
        if len(seen) == calls:
            hidden_NH = seen[0] if calls == 1 else torch.cat(seen)
            out.logp_K, out.entropy_K = token_logps(hidden_NH[keep_N], module.weight, module.bias, tok_K,
                                                    temperature=temperature, with_entropy=with_entropy,
                                                    chunk_tokens=chunk_tokens, entropy_grad=entropy_grad)
            seen.clear()
        return (args[0][..., :0, :],)  # the model's own logits: zero positions

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield out
    finally:
        handle.remove()
    assert out.logp_K is not None, "the model's forward never reached its LM head"
