"""SFT targets as text and as the pieces the model writes: the one definition that SFT (engine/algo/sft.py) and the
load-time length check (engine/setup/limits.py) both read.

    text = target_text(example, cfg.data.sft_template, prompt, vlm)     # the example's own target, or the template
    pieces = target_pieces(text, prompt, vlm)                            # [(text, box_px or None), ...]
    n = sampled_tokens(text, prompt, vlm)                                # the tokens SFT trains on (mask 1)

A target may contain inline tool calls (seed 001): `<tool_call>[x1, y1, x2, y2]</tool_call>` with the box in
ORIGINAL-image pixels. Each piece of `target_pieces` is the text up to and including one call, written with the box
in the model family's frame, and that box in pixels (the crop SFT injects after it, mask 0); the last piece is the
rest, closed with the family's turn end, and no box. `prompt` is anything with the prompt's original `images` and
their `grid_thw` (an engine.rollout.trajectory.Prompt).
"""

from __future__ import annotations

import json
import re

from data.example import Example
from models.load import VLM
from models.vision import resized_size
from tools.boxes import convert_box

_CALL = re.compile(r"<tool_call>\s*\[([^\]]*)\]\s*</tool_call>")
DEFAULT_REASONING = "I look at the image carefully."


def target_text(example: Example, template: str, prompt=None, vlm: VLM | None = None) -> str:
    """The example's own target, else `template` filled in: {answer}, {reasoning} (the reference steps joined,
    or a default sentence), {steps_json} (the steps as a JSON list, one item per step: seed 003's
    reasoning_steps), {answer_json} (the answer as a JSON string) and {box} (the example's first box in the
    model's frame, which needs `prompt` and `vlm`: seed 002's `<answer>[x1, y1, x2, y2]</answer>`)."""
    if example.target is not None:
        return example.target
    return template.format_map(_TargetFields(example, prompt, vlm))


class _TargetFields(dict):
    """The fields of an SFT template, the box computed only when the template asks for it."""

    def __init__(self, example: Example, prompt, vlm: VLM | None):
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
        return frame_box(self.example.boxes[0], self.prompt, self.vlm)


def frame_box(box_px: list[float], prompt, vlm: VLM) -> str:
    """`[x1, y1, x2, y2]` of an original-pixel box in the model family's frame, rounded to whole numbers."""
    frame = vlm.family.box_frame
    box = convert_box(box_px, src="pixels", dst=frame, image_size=prompt.images[0].size,
                      resized_size=resized_size(prompt.grid_thw[0], vlm.family))
    return "[" + ", ".join(str(round(v)) for v in box) + "]"


def target_pieces(target: str, prompt, vlm: VLM) -> list[tuple[str, list[float] | None]]:
    """The target as the model writes it: (text through a tool call in the model's frame, the call's box in
    pixels) per call, then (the rest + the turn end, None)."""
    pieces, pos = [], 0
    for match in _CALL.finditer(target):
        try:
            box_px = [float(v) for v in match.group(1).split(",")]
        except ValueError:
            raise ValueError(f"{prompt.example.origin}: SFT target has a malformed box {match.group(0)!r}") from None
        pieces.append((target[pos:match.start()] + f"<tool_call>{frame_box(box_px, prompt, vlm)}</tool_call>",
                       box_px))
        pos = match.end()
    pieces.append((target[pos:] + vlm.family.turn_end, None))
    return pieces


def sampled_tokens(target: str, prompt, vlm: VLM) -> int:
    """How many tokens SFT trains on for this target: its pieces' tokens, the turn end included."""
    tok = vlm.tokenizer
    return sum(len(tok(text, add_special_tokens=False).input_ids) for text, _ in target_pieces(target, prompt, vlm))
