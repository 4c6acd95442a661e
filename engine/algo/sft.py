"""Supervised warm-start: cross-entropy on the assistant's own tokens only.

A target may contain inline tool calls (seed 001): `<tool_call>[x1, y1, x2, y2]</tool_call>` with the box in
ORIGINAL-image pixels (as data loaders store it). Each box is rewritten in the model family's frame (what the
model must learn to write), the crop is run on the original image and injected right after the call with loss
mask 0, exactly as the rollout would inject it — so SFT teaches the same format RL then samples.
"""

from __future__ import annotations

import torch

from engine.runtime import distributed as D
from engine.algo.objective import padded_rows
from engine.forward.packing import pack, row_logps
from engine.rollout.rollout import finish
from engine.rollout.trajectory import Prompt, Trajectory
from engine.algo.update import optimizer_update
from engine.setup.targets import DEFAULT_REASONING, target_pieces, target_text  # noqa: F401 (re-exported)
from models.load import VLM
from tools.registry import ToolLimits, call_tool


def sft_trajectory(prompt: Prompt, target: str, vlm: VLM, tool_limits: ToolLimits | None = None,
                   max_sampled: int = 0) -> Trajectory:
    """The target as a trajectory: mask 1 on its text (and the family's turn end), 0 on injected crops.
    `max_sampled` > 0 cuts it after that many trained tokens, as a length stop cuts a sample (data.overlong =
    truncate): no crop after the cut, no turn end, stop "length"."""
    tok, traj = vlm.tokenizer, Trajectory.start(prompt, 0)
    room = max_sampled or float("inf")
    traj.stop = "eos"
    for text, box_px in target_pieces(target, prompt, vlm):
        ids = tok(text, add_special_tokens=False).input_ids
        if len(ids) > room:
            traj.append_sampled(ids[:int(room)], [])
            traj.stop = "length"
            break
        traj.append_sampled(ids, [])
        room -= len(ids)
        if box_px is not None:
            result = call_tool("crop", {"box": box_px}, prompt.images[0], tool_limits or ToolLimits())
            if result.error:
                raise ValueError(f"{prompt.example.origin}: SFT target crop failed: {result.error}")
            traj.append_image(result.image, vlm)
    traj.sampler_logp = [0.0] * len(traj.ids)
    finish(traj, vlm)
    return traj


def sft_step(model, optimizer, scheduler, trajs: list[Trajectory], *, micro_batch_tokens: int,
             max_grad_norm: float, chunk_tokens: int = 0) -> dict[str, float]:
    """One optimizer step of token-mean cross-entropy over every assistant token of the batch (engine/algo/update.py's
    update, as RL's; skipped, weights untouched and `sft/skipped_update` 1, when the loss or the gradient norm is
    NaN/inf). Under torchrun `trajs` is this rank's share: the token count is the whole batch's (all ranks), every
    rank runs as many rows as the busiest (zero-weight padding), and the returned loss, norm and count are the
    whole batch's."""
    local = sum(sum(t.mask[1:]) for t in trajs)  # every mask-1 token after position 0 is predicted
    num_tokens = int(D.all_reduce_sum(local))  # sync point: the global count, before the loss
    rows, num_real = padded_rows(pack(trajs, micro_batch_tokens), fallback=None)

    def row_loss(i: int, row):
        logp_K, _ = row_logps(model, row, chunk_tokens=chunk_tokens)
        return -logp_K.sum() / num_tokens, {}, logp_K.numel()

    update = optimizer_update(model, optimizer, scheduler, rows, num_real, row_loss, max_grad_norm=max_grad_norm,
                              scoring={"chunk_tokens": chunk_tokens})
    return {"sft/loss": update["total_loss"], "sft/grad_norm": float(update["grad_norm"]),
            "sft/lr": float(update["lr"]), "sft/tokens": float(num_tokens),
            "sft/skipped_update": float(update["skipped"])}
