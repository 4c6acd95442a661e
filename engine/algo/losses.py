"""All policy-loss math: surrogates, KL penalties, truncated importance sampling, and aggregation.

A micro-batch's loss is four separate pieces, composed by the step in this order:

    per_token, metrics = LOSSES[cfg.loss](LossInputs(logp=..., old_logp=..., adv=..., mask=..., ...), cfg)
    per_token = per_token * tis_weight(old_logp=..., sampler_logp=..., mask=..., cap=cfg.tis_cap)   # optional
    per_token, kl_metrics = add_kl(per_token, logp=..., ref_logp=..., mask=..., beta=cfg.kl_beta,
                                   estimator=cfg.kl_estimator)
    loss = aggregate(per_token, mask=..., seq_idx=..., mode=cfg.aggregation, num_tokens=..., num_seqs=...,
                     norm_len=cfg.norm_len)

so any surrogate composes with any KL estimator and any aggregation. The open contract: a loss is
`fn(x: LossInputs, cfg: AlgoConfig) -> (per_token_loss, metrics)`. `LossInputs` holds every quantity the step
has for a micro-batch (log-probs; old, reference and sampler log-probs; entropy; advantages; mask; sequence
index, lengths and group ids; the step's counts), so a loss that needs one more input reads one more field and
the other losses do not change; `cfg` is the `[algo]` config section, so a new setting is one field there.
docs/ADDING_A_LOSS.md is the recipe, with a worked example that tests/test_adding_a_loss.py runs. Every function
is pure tensor math; nothing here branches on a loss name (the dicts do the choosing). Metrics are detached tensors
(no `.item()`): the step reduces and logs them once per optimizer step. They are masked means over THIS
micro-batch's tokens. Run the tests with `python -m pytest -q tests/test_losses.py`.

Shape legend: B sequences, G group size, T tokens. Token tensors (logp, old_logp, adv, mask, seq_idx and
every per-token result) may have ANY shape, flat [T] or packed rows [R, T], and carry no suffix here; all
that matters is that they share one shape. Per-sequence tensors carry `_B`.
- `adv` is already broadcast from `adv_B` to the tokens.
- `mask` is 1.0 on tokens that carry loss and 0.0 elsewhere (bool accepted; it is treated as binary).
- `seq_idx` (long) gives each token's sequence index in 0..num_seqs−1 (any valid index on masked tokens).
  It may be local to the micro-batch or global to the step: it only has to be < num_seqs and shared by the
  tokens of one sequence.

Padding safety: every function replaces masked-out inputs with 0 through `torch.where` before any
arithmetic, and `aggregate` masks with `torch.where(mask > 0, L, 0)` (not `L * mask`, which turns a NaN
into NaN and its gradient into NaN). NaN or ±inf in padded positions never reaches the loss or the grads.

Losses, and where each departs from its paper:
- "ppo_clip": PPO (arXiv 1707.06347) with DAPO's asymmetric clip-higher (arXiv 2503.14476):
  −min(ρA, clip(ρ, 1−clip_low, 1+clip_high)·A), ρ = exp(logp − old_logp). log ρ is clamped to ±20 before
  exp, as verl does, so ρ is never inf (the clamp also zeroes the gradient past it). Dual-clip (arXiv
  1912.09729) is OFF by default (verl always applies it with c = 3, TRL never); with cfg.dual_clip_c = c,
  tokens with A < 0 get min(loss, −c·A), as in verl.
- "is_pg": plain importance-sampled policy gradient (Tinker's "importance_sampling" loss): −ρA, gradient
  −ρA∇logp, no clipping. Departure: log ρ is clamped to ±20 like ppo_clip, purely for inf-safety.
- "gspo": GSPO (arXiv 2507.18071), the paper's GSPO-token form: s_i = exp(mean over sequence i's masked
  tokens of (logp − old_logp)) and the per-token ratio sg(s_i)·exp(logp − sg(logp)), whose value is s_i
  and whose gradient flows through each token's own logp; then clipped exactly like ppo_clip (including
  dual-clip when set). The ranges come from cfg.clip_low/clip_high (the paper uses 3e-4 / 4e-4; the 0.2
  default is PPO's, so set them). With A constant over a sequence and seq_mean_token_mean aggregation the
  gradient equals the paper's sequence-level GSPO gradient. Departure: verl clamps the log ratio at +10,
  we clamp at ±20 like ppo_clip.
- "cispo": CISPO (MiniMax-M1, arXiv 2506.13585): −sg(clip(ρ, 1−clip_low, 1+clip_high))·A·logp. Every token
  keeps a gradient (−clip(ρ)·A∇logp); the clip bounds its weight instead of dropping it. We follow verl and
  clip both sides of 1; TRL only caps ρ from above, and the paper leaves the lower bound off by making
  ε_low large: set clip_low = 1.0 to get that. The per-token VALUE is not a meaningful objective (it
  includes logp itself); only its gradient is.

KL penalties (Schulman, "Approximating KL divergence", 2020), added per token by `add_kl` as β·kl, as TRL
does: k1 = logp − ref; k2 = ½(logp − ref)²; k3 = exp(ref − logp) − (ref − logp) − 1, its input clamped to
±20 and its value to [−10, 10] as in verl (k3 ≥ 0 always).

Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
RL training"): w = min(exp(old_logp − sampler_logp), cap), detached, multiplies the per-token loss to correct
for the sampler (vLLM/SGLang) and trainer computing different probabilities. verl's default cap is 2.0.

Aggregations (`aggregate`, one function): the normalisers num_tokens / num_seqs are GLOBAL counts for the
whole optimizer step (every micro-batch, every rank), counted once by the caller, so that summing
`aggregate` over micro-batches (and all-reducing over ranks) equals `aggregate` on the whole batch:
- "token_mean": Σ m·L / num_tokens (DAPO's token-level loss over the step).
- "seq_mean_token_mean": Σ_s (Σ_{t∈s} m·L / n_s) / num_seqs, n_s = sequence s's masked-token count (TRL's
  "grpo", the GRPO paper). n_s is counted from the tokens present, which is exact because of the
  INVARIANT that a sequence is never split across micro-batches or ranks.
- "seq_mean_token_sum_norm": Σ m·L / (num_seqs · norm_len) (Dr.GRPO, arXiv 2503.20783); norm_len is a
  constant (verl uses the padded width, TRL max_completion_length): set it to the max new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0  # verl's bound on log ρ: exp(20) ≈ 4.9e8 is finite in fp32 and bf16.
K3_VALUE_CLAMP = 10.0  # verl's bound on the k3 value.

if TYPE_CHECKING:  # the settings every loss reads: the `algo` config section itself, not a copy
    from engine.config.settings import AlgoConfig



@dataclass
class LossInputs:
    """What every loss receives for one micro-batch. Token tensors share one shape (flat [T] or rows [R, T]);
    `_B` tensors are per sequence, indexed by `seq_idx` (`x.adv` is already `adv_B[seq_idx]`)."""

    logp: Tensor  # the policy's log-probs of the sampled tokens, with gradient
    old_logp: Tensor  # the behaviour policy's (num_updates > 1), else logp.detach()
    adv: Tensor  # advantage of each token's sequence
    mask: Tensor  # 1.0 on loss tokens, 0.0 elsewhere
    seq_idx: Tensor  # long: each token's sequence, in 0..num_seqs-1
    num_seqs: int  # sequences in the whole optimizer step (all micro-batches and ranks)
    num_tokens: int | Tensor = 0  # loss tokens in the whole optimizer step (0: not given)
    entropy: Tensor | None = None  # the policy's entropy at each token (with gradient), when the step has it
    ref_logp: Tensor | None = None  # the KL reference's log-probs (kl_beta > 0)
    sampler_logp: Tensor | None = None  # the sampler's own log-probs (vLLM, or tis_cap set)
    seq_len_B: Tensor | None = None  # loss tokens of each sequence in the step
    group_B: Tensor | None = None  # each sequence's prompt group (samples of one prompt share it)


LossFn = Callable[[LossInputs, "AlgoConfig"], tuple[Tensor, dict[str, Tensor]]]


# ---------------------------------------------------------------------------------------------- helpers


def _zero_pad(x: Tensor, keep: Tensor) -> Tensor:
    """x on kept tokens, 0 elsewhere. `where`, not `* mask`: NaN/inf in padding never survive, nor their grads."""
    return torch.where(keep, x, 0.0)


def _masked_mean(x: Tensor, keep: Tensor) -> Tensor:
    """Mean of x over kept tokens (0 if none), detached: for metrics only."""
    x = x.detach().to(torch.float32)
    return _zero_pad(x, keep).sum() / keep.sum().clamp(min=1)


def _per_seq_sum(x: Tensor, seq_idx: Tensor, num_seqs: int) -> Tensor:
    """x_B: the sum of the token tensor x over each sequence (any token shape)."""
    return x.new_zeros(num_seqs).index_add(0, seq_idx.reshape(-1), x.reshape(-1))


def _token_inputs(x: LossInputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checks the shared token-tensor contract; returns (keep, logp, old_logp, adv) with padding zeroed."""
    logp, old_logp, adv, mask, seq_idx = x.logp, x.old_logp, x.adv, x.mask, x.seq_idx
    tensors = dict(logp=logp, old_logp=old_logp, adv=adv, mask=mask, seq_idx=seq_idx)
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"token tensors must share one shape (adv broadcast per token), got {shapes}")
    if seq_idx.dtype.is_floating_point:
        raise ValueError(f"seq_idx must be an integer tensor, got {seq_idx.dtype}")
    keep = mask > 0
    return keep, _zero_pad(logp, keep), _zero_pad(old_logp, keep), _zero_pad(adv, keep)


def _token_ratio(logp: Tensor, old_logp: Tensor) -> tuple[Tensor, Tensor]:
    """(log ρ, ρ) per token, ρ = exp(logp − old_logp) with log ρ clamped to ±20 (verl's bound: never inf)."""
    log_ratio = logp - old_logp
    return log_ratio, torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def _clip_fracs(high: Tensor, low: Tensor, keep: Tensor) -> dict[str, Tensor]:
    """Fractions of the kept tokens clipped above, below, and either."""
    return {"clip_frac": _masked_mean((high | low).float(), keep), "clip_frac_high": _masked_mean(high.float(), keep),
            "clip_frac_low": _masked_mean(low.float(), keep)}


def _ratio_metrics(ratio: Tensor, log_ratio: Tensor, keep: Tensor) -> dict[str, Tensor]:
    ratio = ratio.detach()
    return {
        "ratio_mean": _masked_mean(ratio, keep),
        "ratio_max": _zero_pad(ratio, keep).max().to(torch.float32),  # ratios are > 0, so 0 = no tokens
        "approx_kl": _masked_mean(-log_ratio, keep),  # mean of old_logp − logp (k1), as verl's ppo_kl
    }


def _clipped_surrogate(*, ratio: Tensor, adv: Tensor, keep: Tensor, cfg: AlgoConfig) -> tuple[Tensor, dict]:
    """−min(ρA, clip(ρ)A) per token, then dual-clip for A < 0 when cfg.dual_clip_c is set."""
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = torch.maximum(-ratio * adv, -clipped * adv)  # = −min(ρA, clip(ρ)A)
    r = ratio.detach()
    dual = torch.zeros_like(keep)
    if cfg.dual_clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -cfg.dual_clip_c * adv), loss)
        dual = (adv < 0) & (r > cfg.dual_clip_c)
    high = (adv > 0) & (r > 1.0 + cfg.clip_high)  # these tokens get no gradient
    low = (adv < 0) & (r < 1.0 - cfg.clip_low)
    return loss, {**_clip_fracs(high, low, keep), "dual_clip_frac": _masked_mean(dual.float(), keep)}


# ---------------------------------------------------------------------------------------------- surrogates


def ppo_clip(x: LossInputs, cfg: AlgoConfig):
    """PPO clip with asymmetric bounds (DAPO clip-higher) and optional dual clip."""
    keep, logp, old_logp, adv = _token_inputs(x)
    log_ratio, ratio = _token_ratio(logp, old_logp)
    loss, metrics = _clipped_surrogate(ratio=ratio, adv=adv, keep=keep, cfg=cfg)
    return loss, {**metrics, **_ratio_metrics(ratio, log_ratio, keep)}


def is_pg(x: LossInputs, cfg: AlgoConfig):
    """−ρA, unclipped importance-sampled policy gradient. The clip settings are unused."""
    keep, logp, old_logp, adv = _token_inputs(x)
    log_ratio, ratio = _token_ratio(logp, old_logp)
    return -ratio * adv, _ratio_metrics(ratio, log_ratio, keep)


def gspo(x: LossInputs, cfg: AlgoConfig):
    """GSPO-token: the clipped surrogate on the per-token ratio sg(s_i)·exp(logp − sg(logp)) (value s_i)."""
    keep, logp, old_logp, adv = _token_inputs(x)
    seq_idx, num_seqs = x.seq_idx, x.num_seqs
    log_ratio = logp - old_logp  # 0 on padding, so sums over a sequence only see its masked tokens
    len_B = _per_seq_sum(keep.to(logp.dtype), seq_idx, num_seqs)
    seq_log_ratio_B = _per_seq_sum(log_ratio.detach(), seq_idx, num_seqs) / len_B.clamp(min=1)
    token_log_ratio = seq_log_ratio_B[seq_idx] + logp - logp.detach()  # value log s_i, gradient ∇logp_t
    ratio = torch.exp(token_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss, metrics = _clipped_surrogate(ratio=ratio, adv=adv, keep=keep, cfg=cfg)
    return loss, {**metrics, **_ratio_metrics(ratio, log_ratio, keep)}


def cispo(x: LossInputs, cfg: AlgoConfig):
    """−sg(clip(ρ))·A·logp: gradient −clip(ρ)·A∇logp on every token."""
    keep, logp, old_logp, adv = _token_inputs(x)
    log_ratio, ratio = _token_ratio(logp, old_logp)
    ratio = ratio.detach()
    weight = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)  # stop-gradient: ratio is detached
    high = ratio > 1.0 + cfg.clip_high  # weight capped, gradient kept (unlike ppo_clip)
    low = ratio < 1.0 - cfg.clip_low
    return -weight * adv * logp, {**_clip_fracs(high, low, keep), **_ratio_metrics(ratio, log_ratio, keep)}


LOSSES: dict[str, LossFn] = {"ppo_clip": ppo_clip, "is_pg": is_pg, "gspo": gspo, "cispo": cispo}
USES_DUAL_CLIP = frozenset({"ppo_clip", "gspo"})  # the losses that read cfg.dual_clip_c (config validation)


# ---------------------------------------------------------------------------------------------- KL


def k1(*, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """logp − ref: unbiased under samples from the policy, high variance, can be negative."""
    return logp - ref_logp


def k2(*, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """½(logp − ref)²: biased, low variance, ≥ 0."""
    return 0.5 * (logp - ref_logp) ** 2


def k3(*, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(ref − logp) − (ref − logp) − 1: unbiased, low variance, ≥ 0; clamped as verl's low_var_kl."""
    x = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(x) - x - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)


KL_ESTIMATORS: dict[str, Callable[..., Tensor]] = {"k1": k1, "k2": k2, "k3": k3}


def add_kl(per_token_loss: Tensor, *, logp, ref_logp, mask, beta: float, estimator: str):
    """(per_token_loss + β·kl, {"kl": masked mean}). With ref_logp None, β must be 0 and nothing is added."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator {estimator!r} is unknown; choose one of {sorted(KL_ESTIMATORS)}")
    if ref_logp is None:
        if beta != 0.0:
            raise ValueError(f"kl_beta = {beta} needs reference log-probs (ref_logp); pass them or set kl_beta = 0")
        return per_token_loss, {}
    keep = mask > 0
    kl = KL_ESTIMATORS[estimator](logp=_zero_pad(logp, keep), ref_logp=_zero_pad(ref_logp, keep))
    return per_token_loss + beta * kl, {"kl": _masked_mean(kl, keep)}


# ---------------------------------------------------------------------------------------------- TIS


def tis_weight(*, old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(exp(old_logp − sampler_logp), cap), detached; 1 on padding. Multiply the per-token loss by it."""
    if not cap > 0:
        raise ValueError(f"TIS cap = {cap} must be > 0 (verl's default is 2.0)")
    log_w = _zero_pad(old_logp - sampler_logp, mask > 0).detach()
    return torch.exp(log_w).clamp(max=cap)  # exp(+inf) = inf is capped, so no clamp of log_w is needed


# ---------------------------------------------------------------------------------------------- aggregation


def _token_mean(*, keep, seq_idx, num_tokens, num_seqs, norm_len, dtype):
    return keep.to(dtype) / num_tokens


def _seq_mean_token_mean(*, keep, seq_idx, num_tokens, num_seqs, norm_len, dtype):
    # n_s from the tokens present: exact because a sequence is never split across micro-batches or ranks.
    len_B = _per_seq_sum(keep.to(dtype), seq_idx, num_seqs)
    return keep.to(dtype) / (len_B[seq_idx].clamp(min=1) * num_seqs)


def _seq_mean_token_sum_norm(*, keep, seq_idx, num_tokens, num_seqs, norm_len, dtype):
    if norm_len is None:
        raise ValueError("aggregation 'seq_mean_token_sum_norm' needs norm_len (Dr.GRPO's constant length)")
    return keep.to(dtype) / (num_seqs * norm_len)


# Each maps the mask to per-token weights w, so that the aggregate is Σ w·L.
AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregate(per_token_loss: Tensor, *, mask, seq_idx, mode: str, num_tokens, num_seqs: int, norm_len=None):
    """Scalar loss of one micro-batch. num_tokens (masked tokens) and num_seqs are the GLOBAL counts of the
    optimizer step (an int, or a tensor after an all-reduce), so the sum over micro-batches and ranks is the
    full-batch loss. Masked positions contribute exactly 0, whatever they hold."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation {mode!r} is unknown; choose one of {sorted(AGGREGATIONS)}")
    if per_token_loss.shape != mask.shape or seq_idx.shape != mask.shape:
        raise ValueError(
            f"per_token_loss {tuple(per_token_loss.shape)}, mask {tuple(mask.shape)} and seq_idx "
            f"{tuple(seq_idx.shape)} must share one shape"
        )
    for name, count in (("num_tokens", num_tokens), ("num_seqs", num_seqs)):
        if not isinstance(count, Tensor) and count <= 0:  # a tensor is not checked: that would be a sync
            raise ValueError(f"{name} = {count} must be > 0: the global count for the whole optimizer step")
    keep = mask > 0
    weight = AGGREGATIONS[mode](
        keep=keep, seq_idx=seq_idx, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len,
        dtype=per_token_loss.dtype,
    )
    return (_zero_pad(per_token_loss, keep) * weight).sum()
