"""The one place a policy loss is called: surrogate → truncated IS → token selection → entropy bonus → KL →
aggregation, for one packed row.

    loss, metrics, n = policy_loss(model, row, row_index, batch, cfg.algo, temperature=1.0)

`StepBatch` holds the step-level tensors indexed by trajectory (advantages, lengths, groups) or by row and
position (old / reference / sampler log-probs); `policy_loss` turns one row of it into the `LossInputs` every loss
receives (engine/algo/losses.py). The normalisers (num_tokens, num_seqs) are counted once per optimizer
step, so summing this over micro-batches equals the loss of one big batch. Shapes: B trajectories, K kept tokens.

Under FSDP every rank must run as many forwards and backwards as the busiest one: `padded_rows` tops a rank's
rows up with zero-weight copies, whose `padding_loss` adds exactly 0 to the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.runtime import distributed as D
from engine.config.settings import AlgoConfig
from engine.algo.diagnostics import class_metrics
from engine.algo.losses import LossInputs, add_kl, aggregate, tis_weight, token_metric_means
from engine.config.registries import LOSSES, TOKEN_SELECTIONS
from engine.forward.packing import PackedRow, row_logps
from engine.rollout.token_classes import TOKEN_CLASSES


@dataclass
class StepBatch:
    adv_B: torch.Tensor
    num_tokens: int  # loss tokens in the whole optimizer step
    num_seqs: int  # trajectories in the whole optimizer step
    norm_len: int | None = None  # the aggregation's default length (Dr.GRPO's constant): rollout.max_new_tokens
    seq_len_B: torch.Tensor | None = None  # loss tokens of each trajectory
    group_B: torch.Tensor | None = None  # each trajectory's prompt group
    old_logp: dict[int, torch.Tensor] | None = None  # row index → [K]; None: on-policy (old = logp.detach())
    ref_logp: dict[int, torch.Tensor] | None = None  # row index → [K]; None when nothing needs the reference
    sampler_logp: dict[int, torch.Tensor] | None = None  # row index → [K]; for truncated IS
    step_stats: dict[str, torch.Tensor] | None = None  # the loss's step pass over the whole step, if it has one
    adv_after_B: torch.Tensor | None = None  # algo.call_credit first_call: the advantage after the first tool call
    split_B: torch.Tensor | None = None  # ... and where it starts in each trajectory (engine/algo/call_credit.py)
    old_entropy: dict[int, torch.Tensor] | None = None  # row index → [K]: the behaviour policy's (a selection's)
    selection_stats: dict[str, torch.Tensor] | None = None  # the token selection's step pass, if it has one
    imitate_B: torch.Tensor | None = None  # algo.imitation: each trajectory's per-token −log p coefficient
    imitate_end_B: torch.Tensor | None = None  # ... on its tokens before this position (algo.imitation_span)


def policy_loss(model, row: PackedRow, row_index: int, batch: StepBatch, cfg: AlgoConfig, *,
                temperature: float = 1.0, chunk_tokens: int = 0):
    """One row's loss (normalised by the step's global counts), its detached metrics and its token count. The loss
    is called once; its per-token metrics are reduced here, over the row and per token class."""
    loss_entry = LOSSES.entry(cfg.loss)
    logp_K, entropy_K = row_logps(model, row, temperature=temperature, with_entropy=True, chunk_tokens=chunk_tokens,
                                  entropy_grad="entropy" in loss_entry.traits["needs"] or bool(cfg.entropy_bonus))
    device = logp_K.device
    seq_K = row.seq_K.to(device)
    pick = lambda rows: None if rows is None else rows[row_index]  # noqa: E731
    on_device = lambda t: None if t is None else t.to(device)  # noqa: E731  (no-op when already there)
    x = LossInputs(logp=logp_K, old_logp=logp_K.detach() if batch.old_logp is None else batch.old_logp[row_index],
                   adv=token_advantages(batch, seq_K, row.offset_K.to(device)),
                   mask=torch.ones_like(logp_K),  # kept positions = loss tokens
                   seq_idx=seq_K, num_seqs=batch.num_seqs, num_tokens=batch.num_tokens, entropy=entropy_K,
                   ref_logp=pick(batch.ref_logp), sampler_logp=pick(batch.sampler_logp),
                   seq_len_B=on_device(batch.seq_len_B), group_B=on_device(batch.group_B), step_stats=batch.step_stats)
    per_token_K, metrics = loss_entry.fn(x, cfg.settings(cfg.loss))
    old_K, mask_K, sampler_K = x.old_logp, x.mask, x.sampler_logp
    if sampler_K is not None:  # the trainer's vs the sampler's log-prob of the same tokens
        log_ratio_K = (old_K - sampler_K).detach()
        metrics["tis/mismatch_abs"] = log_ratio_K.abs()
        metrics["tis/ratio_mean"] = log_ratio_K.exp()
        if cfg.tis_cap is not None:
            per_token_K = per_token_K * tis_weight(old_logp=old_K, sampler_logp=sampler_K, mask=mask_K,
                                                   cap=cfg.tis_cap)
            metrics["tis/capped_frac"] = (log_ratio_K.exp() > cfg.tis_cap).float()
    weight_K = TOKEN_SELECTIONS[cfg.token_selection](
        entropy=entropy_K.detach() if batch.old_entropy is None else batch.old_entropy[row_index], mask=mask_K,
        token_class=row.class_K, stats=batch.selection_stats, settings=cfg.settings(cfg.token_selection))
    if weight_K is not None:  # the policy gradient on the selected tokens only (engine/algo/token_selection.py)
        per_token_K = per_token_K * weight_K
        metrics["selected"] = weight_K.detach()
    if cfg.entropy_bonus:  # − coef(class) × entropy, with its gradient: keeps the chosen classes' choices open
        coef_K = class_coefficients(row.class_K, cfg.entropy_bonus).to(device, entropy_K.dtype)
        per_token_K = per_token_K - coef_K * torch.where(mask_K > 0, entropy_K, 0.0)
        metrics["entropy_bonus"] = (coef_K * entropy_K).detach()
    per_token_K, kl_metrics = add_kl(per_token_K, logp=logp_K, mask=mask_K, beta=cfg.kl_beta,
                                     estimator=cfg.kl_estimator, ref_logp=x.ref_logp if cfg.kl_beta > 0 else None)
    metrics.update(kl_metrics)
    loss = aggregate(per_token_K, mask=mask_K, seq_idx=seq_K, mode=cfg.aggregation, num_tokens=batch.num_tokens,
                     num_seqs=batch.num_seqs, settings=cfg.settings(cfg.aggregation), default_len=batch.norm_len)
    if batch.imitate_B is not None:  # best-of-group imitation (engine/algo/imitation.py): already normalised
        coef_K = batch.imitate_B.to(device)[seq_K]
        if batch.imitate_end_B is not None:
            coef_K = torch.where(row.offset_K.to(device) < batch.imitate_end_B.to(device)[seq_K], coef_K, 0.0)
        loss = loss - (coef_K * logp_K).sum()
        metrics["imitated"] = (coef_K > 0).float()
    metrics["entropy"] = entropy_K.detach()
    out = token_metric_means(metrics, mask_K)  # each per-token metric reduced once: over the row ...
    if row.class_K is not None:  # ... and per token class: tool call, answer, other text
        token_metrics = {k: v.detach() for k, v in metrics.items() if v.shape == logp_K.shape}
        out.update(class_metrics(row.class_K, adv_K=x.adv, token_metrics=token_metrics))
    return loss, out, logp_K.numel()


def class_coefficients(class_K: torch.Tensor | None, coefs: dict[str, float]) -> torch.Tensor:
    """Per kept token, the coefficient of its token class (0 for a class not named, or an unclassified token)."""
    if class_K is None:
        raise ValueError("algo.entropy_bonus needs the token classes of the trajectories (engine/rollout/rollout.py "
                         "classes every rollout's tokens); this row has none")
    table = torch.tensor([coefs.get(name, 0.0) for name in TOKEN_CLASSES] + [0.0])  # index -1: unclassified
    return table[class_K.long()]


def token_advantages(batch: StepBatch, seq_K: torch.Tensor, offset_K: torch.Tensor) -> torch.Tensor:
    """Each kept token's advantage: its trajectory's, or with a call split (algo.call_credit) the part's it is in."""
    adv_K = batch.adv_B.to(seq_K.device)[seq_K]
    if batch.adv_after_B is None:
        return adv_K
    after_K = offset_K >= batch.split_B.to(seq_K.device)[seq_K]
    return torch.where(after_K, batch.adv_after_B.to(seq_K.device)[seq_K], adv_K)


@torch.no_grad()
def rows_logps(model, rows: list[PackedRow], *, temperature: float = 1.0,
               chunk_tokens: int = 0) -> dict[int, torch.Tensor]:
    """Log-probs of every row without gradients (old policy or reference)."""
    return {i: row_logps(model, row, temperature=temperature, chunk_tokens=chunk_tokens)[0]
            for i, row in enumerate(rows)}


@torch.no_grad()
def rows_logps_entropy(model, rows: list[PackedRow], *, temperature: float = 1.0, chunk_tokens: int = 0
                       ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(log-probs, entropies) of every row without gradients, from one forward each (the behaviour policy)."""
    out = {i: row_logps(model, row, temperature=temperature, chunk_tokens=chunk_tokens, with_entropy=True)
           for i, row in enumerate(rows)}
    return {i: v[0] for i, v in out.items()}, {i: v[1] for i, v in out.items()}


def sampler_logps(rows: list[PackedRow], trajs, device: torch.device) -> dict[int, torch.Tensor]:
    """The sampler's log-prob of every kept token, per row, on `device` (rows' index tensors live on the CPU:
    the .tolist() calls read host memory, no device sync)."""
    return {i: torch.tensor([trajs[s].sampler_logp[o] for s, o in zip(r.seq_K.tolist(), r.offset_K.tolist())],
                            device=device) for i, r in enumerate(rows)}


def padded_rows(rows: list[PackedRow], *, fallback) -> tuple[list[PackedRow], int]:
    """(rows, number of real rows): this rank's rows topped up to the busiest rank's count with copies of its
    last row, or of `fallback()` (a row of anything this rank has) when it has none. One process: unchanged."""
    assert rows or fallback is not None, "a rank without rows needs a fallback row to pad with"
    num_real = len(rows)
    n = D.max_over_ranks(num_real)  # sync point
    if n > num_real:
        rows = rows + [rows[-1] if rows else fallback()] * (n - num_real)
    return rows, num_real


def padding_loss(model, row: PackedRow, *, temperature: float = 1.0, chunk_tokens: int = 0) -> torch.Tensor:
    """0 × a real forward: backward through it runs FSDP's collectives and adds exactly 0 to every gradient."""
    return row_logps(model, row, temperature=temperature, chunk_tokens=chunk_tokens)[0].sum() * 0.0


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: clip_grad_norm_ over FSDP's sharded gradients returns a (replicated) DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
