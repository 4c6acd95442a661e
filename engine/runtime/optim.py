"""AdamW with linear warmup then cosine decay (or constant), stepped once per optimizer step."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, *, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check the model / LoRA settings")
    # fused: one kernel for all parameters instead of a Python loop of ~8 ops each (the tiny model's step: 4.1 ->
    # 1.0 ms CPU). Only where every parameter is a plain tensor of one device: FSDP2's DTensors take the default.
    plain = all(type(p.data) is torch.Tensor for p in params) and len({p.device for p in params}) == 1
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=plain or None)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, *, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule, min_ratio=min_ratio))
