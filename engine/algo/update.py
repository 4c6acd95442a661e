"""The optimizer update both stages share: loss + backward over every packed row, clip, optimizer step.

    update = optimizer_update(model, optimizer, scheduler, rows, num_real, row_loss,
                              max_grad_norm=1.0, scoring={"temperature": 1.0, "chunk_tokens": 0})

A NaN/inf loss or gradient norm would poison every weight: the update is then skipped (weights and lr schedule
untouched; `skipped` is returned, and the trainer counts and stops on a streak, engine/runtime/guard.py).

`row_loss(i, row) -> (loss, metrics, n)` is the only thing a stage brings: RL's is the policy loss of row i
(engine/algo/objective.py), SFT's the cross-entropy of its assistant tokens (engine/algo/sft.py). Each row's loss is already
normalised by the whole step's counts (every micro-batch, every rank), so the backward passes accumulate exactly the
gradient of one big batch. Rows from `num_real` on are zero-weight padding (`padding_loss`): under FSDP every rank
runs as many forwards and backwards as the busiest one. The returned metrics stay detached tensors on the model's
device; the step reduces them once (engine/algo/diagnostics.py). One host sync: the finiteness decision.

`due(step, every, last)` is the one rule for the periodic actions of a stage's loop (evaluate, save).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from engine.runtime import distributed as D
from engine.algo.objective import full_value, padding_loss
from engine.forward.packing import PackedRow

RowLoss = Callable[[int, PackedRow], tuple[torch.Tensor, dict[str, torch.Tensor], int]]


def optimizer_update(model, optimizer, scheduler, rows: list[PackedRow], num_real: int, row_loss: RowLoss, *,
                     max_grad_norm: float, scoring: dict) -> dict:
    """One optimizer step. Returns this rank's token-weighted metric sums ("sums"), their token count ("tokens"),
    its share of the loss ("loss") and the sum over ranks ("total_loss", a float), the global gradient norm before
    clipping ("grad_norm"), the learning rate the step used ("lr") and whether the update was skipped."""
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    total, loss_sum = 0, torch.zeros((), device=next(model.parameters()).device)
    for i, row in enumerate(rows):
        if i >= num_real:
            padding_loss(model, row, **scoring).backward()
            continue
        loss, metrics, n = row_loss(i, row)
        loss.backward()
        loss_sum = loss_sum + loss.detach()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0) + v.float() * n
        total += n
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = full_value(torch.nn.utils.clip_grad_norm_(params, max_norm))  # global over ranks (FSDP)
    lr = torch.tensor(scheduler.get_last_lr()[0])
    # The loss is summed over ranks so that every rank makes the same decision (sync point: float()).
    total_loss = float(D.all_reduce_sum(loss_sum))
    skipped = not (math.isfinite(total_loss) and bool(torch.isfinite(grad_norm).all()))
    if not skipped:  # a skipped update: nothing moves, the schedule included
        optimizer.step()
        scheduler.step()
    # Gradients freed now, not at the next update: their memory is the weight push's and the next rollout's
    # (a colocated vLLM engine's KV cache; the memory planner counts them only during the update).
    optimizer.zero_grad(set_to_none=True)
    return {"sums": sums, "tokens": total, "loss": loss_sum, "total_loss": total_loss, "grad_norm": grad_norm,
            "lr": lr, "skipped": skipped}


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action runs after `step` (1-based) of a stage of `last` steps: every `every` steps (0:
    never), but not after the last step, where the stage's end evaluates and saves anyway (once)."""
    return every > 0 and step % every == 0 and step < last
