"""All policy-loss math: surrogates, KL penalties, truncated importance sampling, and aggregation.

A micro-batch's loss is four separate pieces, composed by the step in this order:

    per_token, metrics = LOSSES[cfg.loss](LossInputs(logp=..., old_logp=..., adv=..., mask=..., ...), settings)
    per_token = per_token * tis_weight(old_logp=..., sampler_logp=..., mask=..., cap=cfg.tis_cap)   # optional
    per_token, kl_metrics = add_kl(per_token, logp=..., ref_logp=..., mask=..., beta=cfg.kl_beta,
                                   estimator=cfg.kl_estimator)
    loss = aggregate(per_token, mask=..., seq_idx=..., mode=cfg.aggregation, num_tokens=..., num_seqs=...,
                     settings=..., default_len=...)

so any surrogate composes with any KL estimator and any aggregation. The open contract: a loss is
`fn(x: LossInputs, s) -> (per_token_loss, metrics)`, registered with `@LOSSES.register(name, settings=...)`
(engine/config/registries.py says what a loss may declare). `LossInputs` holds every quantity the step has for a
micro-batch (log-probs; old, reference and sampler log-probs; entropy; advantages; mask; sequence index, lengths
and group ids; the step's counts and the loss's own step-level statistics), so a loss that needs one more input
reads one more field and the other losses do not change; `s` is the loss's own settings (`[algo.<name>]`, e.g.
`[algo.ppo_clip] clip_high = 0.28`), or None when it declares none. docs/PLUGINS.md is the recipe, with a
worked example that CI trains from a plugin file. Every function is pure tensor math; nothing here branches on a
loss name (the registries do the choosing).

Metrics are detached tensors (no `.item()`), of two kinds: a scalar (e.g. ratio_max), or a per-token tensor of the
token shape (an indicator such as "this token was clipped", or a value such as the ratio), which the step reduces
ONCE — its mean over the loss tokens, and per token class (engine/algo/diagnostics.py) — so a loss is called once
per row, never again for its metrics. Run the tests with `python -m pytest -q tests/test_losses.py`.

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
  1912.09729) is OFF by default (verl always applies it with c = 3, TRL never); with dual_clip_c = c,
  tokens with A < 0 get min(loss, −c·A), as in verl. Settings `[algo.ppo_clip]`: clip_low 0.2, clip_high 0.28
  (DAPO's clip-higher), dual_clip_c none.
- "is_pg": plain importance-sampled policy gradient (Tinker's "importance_sampling" loss): −ρA, gradient
  −ρA∇logp, no clipping. Departure: log ρ is clamped to ±20 like ppo_clip, purely for inf-safety.
- "gspo": GSPO (arXiv 2507.18071), the paper's GSPO-token form: s_i = exp(mean over sequence i's masked
  tokens of (logp − old_logp)) and the per-token ratio sg(s_i)·exp(logp − sg(logp)), whose value is s_i
  and whose gradient flows through each token's own logp; then clipped exactly like ppo_clip (including
  dual-clip when set). Settings `[algo.gspo]`: the paper's ranges, clip_low 3e-4 and clip_high 4e-4, by
  default. With A constant over a sequence and seq_mean_token_mean aggregation the gradient equals the paper's
  sequence-level GSPO gradient. Departure: verl clamps the log ratio at +10, we clamp at ±20 like ppo_clip.
- "cispo": CISPO (MiniMax-M1, arXiv 2506.13585): −sg(clip(ρ, 1−clip_low, 1+clip_high))·A·logp. Every token
  keeps a gradient (−clip(ρ)·A∇logp); the clip bounds its weight instead of dropping it. We follow verl and
  clip both sides of 1; TRL only caps ρ from above, and the paper leaves the lower bound off by making
  ε_low large: set clip_low = 1.0 to get that. The per-token VALUE is not a meaningful objective (it
  includes logp itself); only its gradient is. Settings `[algo.cispo]`: clip_low 0.2, clip_high 0.28.

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
  constant (verl uses the padded width, TRL max_completion_length): `[algo.seq_mean_token_sum_norm] norm_len`,
  by default rollout.max_new_tokens (the step passes it as `default_len`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from engine.config.parsing import doc
from engine.config.registries import AGGREGATIONS, KL_ESTIMATORS, LOSSES

LOG_RATIO_CLAMP = 20.0  # verl's bound on log ρ: exp(20) ≈ 4.9e8 is finite in fp32 and bf16.
K3_VALUE_CLAMP = 10.0  # verl's bound on the k3 value.


@dataclass
class LossInputs:
    """What every loss receives for one micro-batch. Token tensors share one shape (flat [T] or rows [R, T]);
    `_B` tensors are per sequence, indexed by `seq_idx` (`x.adv` is already `adv_B[seq_idx]`)."""

    logp: Tensor  # the policy's log-probs of the sampled tokens, with gradient
    old_logp: Tensor  # the behaviour policy's (num_updates > 1, or a loss with a step pass), else logp.detach()
    adv: Tensor  # advantage of each token's sequence
    mask: Tensor  # 1.0 on loss tokens, 0.0 elsewhere
    seq_idx: Tensor  # long: each token's sequence, in 0..num_seqs-1
    num_seqs: int  # sequences in the whole optimizer step (all micro-batches and ranks)
    num_tokens: int | Tensor = 0  # loss tokens in the whole optimizer step (0: not given)
    entropy: Tensor | None = None  # the policy's entropy at each token: with gradient when the loss needs "entropy"
    ref_logp: Tensor | None = None  # the KL reference's log-probs (kl_beta > 0, or a loss that needs "ref_logp")
    sampler_logp: Tensor | None = None  # the sampler's own log-probs (vLLM, tis_cap, or a loss that needs them)
    seq_len_B: Tensor | None = None  # loss tokens of each sequence in the step
    group_B: Tensor | None = None  # each sequence's prompt group (samples of one prompt share it)
    step_stats: dict[str, Tensor] | None = None  # the loss's own step pass over every token of the step, if any


@dataclass
class StepTokens:
    """Every loss token of an optimizer step (all micro-batches and ranks, flat [N], no gradient): what a loss's
    `step_pass` sees before the micro-batch losses. Token order is the step's own (rank, row, position)."""

    old_logp: Tensor
    adv: Tensor
    entropy: Tensor | None = None
    ref_logp: Tensor | None = None


LossFn = Callable[[LossInputs, object], tuple[Tensor, dict[str, Tensor]]]


# ---------------------------------------------------------------------------------------------- settings


@dataclass
class ClipRange:
    clip_low: float = doc(0.2, "Lower clip range ε_low: ratio ≥ 1 − ε_low (1.0 removes the bound: ρ ≥ 0 anyway).",
                          ge=0.0, le=1.0)
    clip_high: float = doc(0.28, "Upper clip range ε_high: ratio ≤ 1 + ε_high (DAPO clip-higher: 0.28).", ge=0.0)


@dataclass
class PPOClipSettings(ClipRange):
    dual_clip_c: float | None = doc(None, "Dual-clip bound c > 1 for negative advantages (none: off; verl uses 3).",
                                    gt=1.0)


@dataclass
class GSPOSettings(PPOClipSettings):
    clip_low: float = doc(3e-4, "Lower clip range of the sequence ratio (the GSPO paper: 3e-4).", ge=0.0, le=1.0)
    clip_high: float = doc(4e-4, "Upper clip range of the sequence ratio (the GSPO paper: 4e-4).", ge=0.0)


@dataclass
class NormLenSettings:
    norm_len: int | None = doc(None, "Dr.GRPO's constant length (none: rollout.max_new_tokens).", gt=0)


# ---------------------------------------------------------------------------------------------- helpers


def _zero_pad(x: Tensor, keep: Tensor) -> Tensor:
    """x on kept tokens, 0 elsewhere. `where`, not `* mask`: NaN/inf in padding never survive, nor their grads."""
    return torch.where(keep, x, 0.0)


def token_metric_means(metrics: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
    """A loss's metrics as scalars: each per-token metric (the token shape) becomes its mean over the loss tokens
    (0 when there are none; padding never counts, whatever it holds), scalars pass as they are. Detached."""
    keep = mask > 0
    count = keep.sum().clamp(min=1)
    return {k: (_zero_pad(v.detach().float(), keep).sum() / count if v.shape == mask.shape and v.dim() > 0
                else v.detach()) for k, v in metrics.items()}


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


def _clip_fracs(high: Tensor, low: Tensor) -> dict[str, Tensor]:
    """Per-token indicators: clipped above, below, and either (the step reduces them to fractions)."""
    return {"clip_frac": (high | low).float(), "clip_frac_high": high.float(), "clip_frac_low": low.float()}


def _ratio_metrics(ratio: Tensor, log_ratio: Tensor, keep: Tensor) -> dict[str, Tensor]:
    ratio = ratio.detach()
    return {
        "ratio_mean": ratio,  # per token; reduced by the step
        "ratio_max": _zero_pad(ratio, keep).max().to(torch.float32),  # ratios are > 0, so 0 = no tokens
        "approx_kl": -log_ratio.detach(),  # per token: old_logp − logp (k1), as verl's ppo_kl
    }


def _clipped_surrogate(*, ratio: Tensor, adv: Tensor, s: PPOClipSettings) -> tuple[Tensor, dict]:
    """−min(ρA, clip(ρ)A) per token, then dual-clip for A < 0 when s.dual_clip_c is set."""
    clipped = ratio.clamp(1.0 - s.clip_low, 1.0 + s.clip_high)
    loss = torch.maximum(-ratio * adv, -clipped * adv)  # = −min(ρA, clip(ρ)A)
    r = ratio.detach()
    dual = torch.zeros_like(r, dtype=torch.bool)
    if s.dual_clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -s.dual_clip_c * adv), loss)
        dual = (adv < 0) & (r > s.dual_clip_c)
    high = (adv > 0) & (r > 1.0 + s.clip_high)  # these tokens get no gradient
    low = (adv < 0) & (r < 1.0 - s.clip_low)
    return loss, {**_clip_fracs(high, low), "dual_clip_frac": dual.float()}


# ---------------------------------------------------------------------------------------------- surrogates


@LOSSES.register("ppo_clip", settings=PPOClipSettings)
def ppo_clip(x: LossInputs, s: PPOClipSettings):
    """PPO clip with asymmetric bounds (DAPO clip-higher) and optional dual clip."""
    keep, logp, old_logp, adv = _token_inputs(x)
    log_ratio, ratio = _token_ratio(logp, old_logp)
    loss, metrics = _clipped_surrogate(ratio=ratio, adv=adv, s=s)
    return loss, {**metrics, **_ratio_metrics(ratio, log_ratio, keep)}


@LOSSES.register("is_pg")
def is_pg(x: LossInputs, s: None):
    """−ρA, unclipped importance-sampled policy gradient (it has no settings)."""
    keep, logp, old_logp, adv = _token_inputs(x)
    log_ratio, ratio = _token_ratio(logp, old_logp)
    return -ratio * adv, _ratio_metrics(ratio, log_ratio, keep)


@LOSSES.register("gspo", settings=GSPOSettings)
def gspo(x: LossInputs, s: GSPOSettings):
    """GSPO-token: the clipped surrogate on the per-token ratio sg(s_i)·exp(logp − sg(logp)) (value s_i)."""
    keep, logp, old_logp, adv = _token_inputs(x)
    seq_idx, num_seqs = x.seq_idx, x.num_seqs
    log_ratio = logp - old_logp  # 0 on padding, so sums over a sequence only see its masked tokens
    len_B = _per_seq_sum(keep.to(logp.dtype), seq_idx, num_seqs)
    seq_log_ratio_B = _per_seq_sum(log_ratio.detach(), seq_idx, num_seqs) / len_B.clamp(min=1)
    token_log_ratio = seq_log_ratio_B[seq_idx] + logp - logp.detach()  # value log s_i, gradient ∇logp_t
    ratio = torch.exp(token_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss, metrics = _clipped_surrogate(ratio=ratio, adv=adv, s=s)
    return loss, {**metrics, **_ratio_metrics(ratio, log_ratio, keep)}


@LOSSES.register("cispo", settings=ClipRange)
def cispo(x: LossInputs, s: ClipRange):
    """−sg(clip(ρ))·A·logp: gradient −clip(ρ)·A∇logp on every token."""
    keep, logp, old_logp, adv = _token_inputs(x)
    log_ratio, ratio = _token_ratio(logp, old_logp)
    ratio = ratio.detach()
    weight = ratio.clamp(1.0 - s.clip_low, 1.0 + s.clip_high)  # stop-gradient: ratio is detached
    high = ratio > 1.0 + s.clip_high  # weight capped, gradient kept (unlike ppo_clip)
    low = ratio < 1.0 - s.clip_low
    return -weight * adv * logp, {**_clip_fracs(high, low), **_ratio_metrics(ratio, log_ratio, keep)}


# ---------------------------------------------------------------------------------------------- KL


@KL_ESTIMATORS.register("k1")
def k1(*, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """logp − ref: unbiased under samples from the policy, high variance, can be negative."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(*, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """½(logp − ref)²: biased, low variance, ≥ 0."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(*, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(ref − logp) − (ref − logp) − 1: unbiased, low variance, ≥ 0; clamped as verl's low_var_kl."""
    x = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(x) - x - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)



def add_kl(per_token_loss: Tensor, *, logp, ref_logp, mask, beta: float, estimator: str):
    """(per_token_loss + β·kl, {"kl": kl per token}). With ref_logp None, β must be 0 and nothing is added."""
    kl_fn = KL_ESTIMATORS[estimator]  # ValueError naming the choices when unknown
    if ref_logp is None:
        if beta != 0.0:
            raise ValueError(f"kl_beta = {beta} needs reference log-probs (ref_logp); pass them or set kl_beta = 0")
        return per_token_loss, {}
    keep = mask > 0
    kl = kl_fn(logp=_zero_pad(logp, keep), ref_logp=_zero_pad(ref_logp, keep))
    return per_token_loss + beta * kl, {"kl": kl.detach()}  # per token: the step reduces it


# ---------------------------------------------------------------------------------------------- TIS


def tis_weight(*, old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(exp(old_logp − sampler_logp), cap), detached; 1 on padding. Multiply the per-token loss by it."""
    if not cap > 0:
        raise ValueError(f"TIS cap = {cap} must be > 0 (verl's default is 2.0)")
    log_w = _zero_pad(old_logp - sampler_logp, mask > 0).detach()
    return torch.exp(log_w).clamp(max=cap)  # exp(+inf) = inf is capped, so no clamp of log_w is needed


# ---------------------------------------------------------------------------------------------- aggregation


@AGGREGATIONS.register("token_mean")
def _token_mean(*, keep, seq_idx, num_tokens, num_seqs, settings, default_len, dtype):
    return keep.to(dtype) / num_tokens


@AGGREGATIONS.register("seq_mean_token_mean")
def _seq_mean_token_mean(*, keep, seq_idx, num_tokens, num_seqs, settings, default_len, dtype):
    # n_s from the tokens present: exact because a sequence is never split across micro-batches or ranks.
    len_B = _per_seq_sum(keep.to(dtype), seq_idx, num_seqs)
    return keep.to(dtype) / (len_B[seq_idx].clamp(min=1) * num_seqs)


@AGGREGATIONS.register("seq_mean_token_sum_norm", settings=NormLenSettings)
def _seq_mean_token_sum_norm(*, keep, seq_idx, num_tokens, num_seqs, settings, default_len, dtype):
    norm_len = settings.norm_len or default_len
    if norm_len is None:
        raise ValueError("aggregation 'seq_mean_token_sum_norm' needs norm_len (Dr.GRPO's constant length)")
    return keep.to(dtype) / (num_seqs * norm_len)


def aggregate(per_token_loss: Tensor, *, mask, seq_idx, mode: str, num_tokens, num_seqs: int, settings=None,
              default_len: int | None = None):
    """Scalar loss of one micro-batch: Σ w·L with the weights of aggregation `mode` (each registered aggregation
    maps the mask to per-token weights). num_tokens (masked tokens) and num_seqs are the GLOBAL counts of the
    optimizer step (an int, or a tensor after an all-reduce), so the sum over micro-batches and ranks is the
    full-batch loss. Masked positions contribute exactly 0, whatever they hold. `settings`: the aggregation's own
    (its defaults when None); `default_len`: Dr.GRPO's length when its settings leave it to the rollout."""
    entry = AGGREGATIONS.entry(mode)  # ValueError naming the choices when unknown
    if per_token_loss.shape != mask.shape or seq_idx.shape != mask.shape:
        raise ValueError(
            f"per_token_loss {tuple(per_token_loss.shape)}, mask {tuple(mask.shape)} and seq_idx "
            f"{tuple(seq_idx.shape)} must share one shape"
        )
    for name, count in (("num_tokens", num_tokens), ("num_seqs", num_seqs)):
        if not isinstance(count, Tensor) and count <= 0:  # a tensor is not checked: that would be a sync
            raise ValueError(f"{name} = {count} must be > 0: the global count for the whole optimizer step")
    if settings is None and entry.settings is not None:
        settings = entry.settings()
    keep = mask > 0
    weight = entry.fn(keep=keep, seq_idx=seq_idx, num_tokens=num_tokens, num_seqs=num_seqs, settings=settings,
                      default_len=default_len, dtype=per_token_loss.dtype)
    return (_zero_pad(per_token_loss, keep) * weight).sum()
