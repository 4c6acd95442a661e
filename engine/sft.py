"""Supervised warm-start: cross-entropy on the assistant's own tokens only.

A target may contain inline tool calls (seed 001): `<tool_call>[x1, y1, x2, y2]</tool_call>` with the box in
ORIGINAL-image pixels (as data loaders store it). Each box is rewritten in the model family's frame (what the
model must learn to write), the crop is run on the original image and injected right after the call with loss
mask 0, exactly as the rollout would inject it — so SFT teaches the same format RL then samples.
"""

from __future__ import annotations

import json
import math
import re

import torch

from data.example import Example
from engine import distributed as D
from engine.objective import full_value, padded_rows, padding_loss
from engine.packing import pack, row_logps
from engine.rollout import finish
from engine.trajectory import Prompt, Trajectory
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
    """The target as a trajectory: mask 1 on its text (and the closing <|im_end|>), 0 on injected crops."""
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
    traj.append_sampled(tok(target[pos:] + "<|im_end|>", add_special_tokens=False).input_ids, [])
    traj.sampler_logp = [0.0] * len(traj.ids)
    traj.stop = "eos"
    finish(traj, vlm)
    return traj


def sft_step(model, optimizer, scheduler, trajs: list[Trajectory], *, micro_batch_tokens: int,
             max_grad_norm: float, chunk_tokens: int = 0) -> dict[str, float]:
    """One optimizer step of token-mean cross-entropy over every assistant token of the batch; skipped (weights
    untouched, `sft/skipped_update` 1) when the loss or the gradient norm is NaN/inf. Under torchrun
    `trajs` is this rank's share: the token count is the whole batch's (all ranks), every rank runs as many rows
    as the busiest (zero-weight padding), and the returned loss, norm and count are the whole batch's."""
    optimizer.zero_grad(set_to_none=True)
    local = sum(sum(t.mask[1:]) for t in trajs)  # every mask-1 token after position 0 is predicted
    num_tokens = int(D.all_reduce_sum(local))  # sync point: the global count, before the loss
    rows, num_real = padded_rows(pack(trajs, micro_batch_tokens), fallback=None)
    total = torch.zeros((), device=next(model.parameters()).device)
    for i, row in enumerate(rows):
        if i >= num_real:
            padding_loss(model, row, chunk_tokens=chunk_tokens).backward()
            continue
        logp_K, _ = row_logps(model, row, chunk_tokens=chunk_tokens)
        loss = -logp_K.sum() / num_tokens
        loss.backward()
        total = total + loss.detach()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(full_value(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0
                                                                else float("inf"))))  # global over ranks
    loss = float(D.all_reduce_sum(total))  # sync point, as the norm above: the same decision on every rank
    lr = scheduler.get_last_lr()[0]
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if skipped:  # a NaN/inf update would poison every weight: skip it, schedule included (the trainer counts)
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
        scheduler.step()
    return {"sft/loss": loss, "sft/grad_norm": grad_norm, "sft/lr": lr, "sft/tokens": float(num_tokens),
            "sft/skipped_update": float(skipped)}
