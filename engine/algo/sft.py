"""Supervised warm-start: cross-entropy on the assistant's own tokens only.

A target may contain inline tool calls (seed 001): `<tool_call>[x1, y1, x2, y2]</tool_call>` with the box in
ORIGINAL-image pixels (as data loaders store it). Each box is rewritten in the model family's frame (what the
model must learn to write), the crop is run on the original image and injected right after the call with loss
mask 0, exactly as the rollout would inject it — so SFT teaches the same format RL then samples.
"""

from __future__ import annotations

import json
import re

import torch

from data.example import Example
from engine.runtime import distributed as D
from engine.algo.objective import padded_rows
from engine.forward.packing import pack, row_logps
from engine.rollout.rollout import finish
from engine.rollout.trajectory import Prompt, Trajectory
from engine.algo.update import optimizer_update
from models.load import VLM
from models.vision import resized_size
from tools.boxes import convert_box
from tools.registry import ToolLimits, call_tool

_CALL = re.compile(r"<tool_call>\s*\[([^\]]*)\]\s*</tool_call>")
DEFAULT_REASONING = "I look at the image carefully."


def target_text(example: Example, template: str, prompt: Prompt | None = None, vlm: VLM | None = None) -> str:
    """The example's own target, else `template` filled in: {answer}, {reasoning} (the reference steps joined,
    or a default sentence), {steps_json} (the steps as a JSON list, one item per step: seed 003's
    reasoning_steps), {answer_json} (the answer as a JSON string) and {box} (the example's first box in the
    model's frame, which needs `prompt` and `vlm`: seed 002's `<answer>[x1, y1, x2, y2]</answer>`)."""
    if example.target is not None:
        return example.target
    return template.format_map(_TargetFields(example, prompt, vlm))


class _TargetFields(dict):
    """The fields of an SFT template, the box computed only when the template asks for it."""

    def __init__(self, example: Example, prompt: Prompt | None, vlm: VLM | None):
        steps = example.reference_steps or [DEFAULT_REASONING]
        super().__init__(answer=example.answer, reasoning=" ".join(steps), steps_json=json.dumps(steps),
                         answer_json=json.dumps(example.answer))
        self.example, self.prompt, self.vlm = example, prompt, vlm

    def __missing__(self, key: str) -> str:
        if key != "box":
            raise ValueError(f"data.sft_template names {{{key}}}; it may use {{answer}}, {{reasoning}}, "
                             "{steps_json}, {answer_json} and {box} ({{ and }} for literal braces)")
        if not self.example.boxes:
            raise ValueError(f"{self.example.origin}: data.sft_template uses {{box}} but this example has no box "
                             "(a bbox / bboxs field)")
        assert self.prompt is not None and self.vlm is not None, "{box} needs the prompt and the model"
        return _frame_box(self.example.boxes[0], self.prompt, self.vlm)


def _frame_box(box_px: list[float], prompt: Prompt, vlm: VLM) -> str:
    frame = vlm.family.box_frame
    box = convert_box(box_px, src="pixels", dst=frame, image_size=prompt.images[0].size,
                      resized_size=resized_size(prompt.grid_thw[0], vlm.family))
    return "[" + ", ".join(str(round(v)) for v in box) + "]"


def sft_trajectory(prompt: Prompt, target: str, vlm: VLM, tool_limits: ToolLimits | None = None) -> Trajectory:
    """The target as a trajectory: mask 1 on its text (and the family's turn end), 0 on injected crops."""
    tok, traj, pos = vlm.tokenizer, Trajectory.start(prompt, 0), 0
    for match in _CALL.finditer(target):
        try:
            box_px = [float(v) for v in match.group(1).split(",")]
        except ValueError:
            raise ValueError(f"{prompt.example.origin}: SFT target has a malformed box {match.group(0)!r}")
        text = target[pos:match.start()] + f"<tool_call>{_frame_box(box_px, prompt, vlm)}</tool_call>"
        traj.append_sampled(tok(text, add_special_tokens=False).input_ids, [])
        result = call_tool("crop", {"box": box_px}, prompt.images[0], tool_limits or ToolLimits())
        if result.error:
            raise ValueError(f"{prompt.example.origin}: SFT target crop failed: {result.error}")
        traj.append_image(result.image, vlm)
        pos = match.end()
    traj.append_sampled(tok(target[pos:] + vlm.family.turn_end, add_special_tokens=False).input_ids, [])
    traj.sampler_logp = [0.0] * len(traj.ids)
    traj.stop = "eos"
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
