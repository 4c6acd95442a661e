"""Grounding rewards: "iou" (continuous IoU, best over the reference boxes) and "iou50" (1 when that IoU >= 0.5).

Try one: `python -m rewards.explain iou --completion '<answer>{"bbox": [10, 10, 50, 50]}</answer>'
--answer "[10, 10, 50, 50]"`.

Source: seed 002 (Vision_GRPO, visual grounding on TextVQA/VisCoT): the model answers
`<answer>[x1, y1, x2, y2]</answer>` or `<answer>{"bbox": [x1, y1, x2, y2]}</answer>`; IoU against the
reference; the 0.5 threshold is the usual referring-expression "Acc@0.5".

The prediction is read from the last `<answer>` (the whole response only when there is no `<answer>` tag at
all); the LAST `[a, b, c, d]` in it wins. It is in `ctx.box_frame` and is converted to original-image pixels
before the IoU (see docs/DESIGN.md, "Box frames"): pixels as is; norm1000 x * w / 1000; resized x * w / rw.
The converter is local on purpose (the tools/ package owns the model-boundary one). References are
`example.boxes` (pixels), else the boxes written in `example.answers`. An inverted or empty box (x1 >= x2 or
y1 >= y2) scores 0. IoU here is continuous (no "+1 pixel" convention).
"""

from __future__ import annotations

import math
import re

from data.example import Example
from rewards.format import is_placeholder, response_text, tag_blocks
from rewards.registry import RewardContext, register

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(rf"\[{_NUM},{_NUM},{_NUM},{_NUM}\]")


def parse_box(text: str | None) -> list[float] | None:
    """The last `[x1, y1, x2, y2]` in the text (bare or inside {"bbox": ...}), or None."""
    if text is None:
        return None
    boxes = _BOX.findall(text)
    return [float(v) for v in boxes[-1]] if boxes else None


def predicted_box(response: str) -> list[float] | None:
    """The box of the last `<answer>`; the whole response is searched only when it has no `<answer>` at all."""
    tags = tag_blocks(response, "answer")
    if tags:
        return None if is_placeholder(tags[-1]) else parse_box(tags[-1])
    return parse_box(response)


def to_pixels(box: list[float], frame: str, image_size, resized_size=None) -> list[float]:
    """Convert a box from `frame` ("pixels" | "norm1000" | "resized") to original-image pixels."""
    if frame not in ("pixels", "norm1000", "resized"):
        raise ValueError(f"unknown box frame {frame!r}; use 'pixels', 'resized' or 'norm1000'")
    x1, y1, x2, y2 = box
    if frame == "pixels":
        return [x1, y1, x2, y2]
    if image_size is None:
        raise ValueError(f"box frame {frame!r} needs ctx.image_sizes[0] (or ctx.images[0]) to convert to pixels")
    w, h = image_size
    if frame == "norm1000":
        sx, sy = w / 1000.0, h / 1000.0
    else:
        if resized_size is None:
            raise ValueError("box frame 'resized' needs ctx.resized_sizes[0] to convert to pixels")
        sx, sy = w / resized_size[0], h / resized_size[1]
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes; 0 when either is invalid (x1 >= x2 or y1 >= y2)."""
    if not all(math.isfinite(v) for v in (*a, *b)):
        return 0.0
    if a[0] >= a[2] or a[1] >= a[3] or b[0] >= b[2] or b[1] >= b[3]:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _reference_boxes(example: Example) -> list[list[float]]:
    boxes = [list(map(float, b)) for b in example.boxes]
    if not boxes:
        boxes = [b for b in map(parse_box, example.answers) if b is not None]
    if not boxes:
        raise ValueError(f"{example.origin or 'example'}: no reference box in example.boxes or example.answers")
    return boxes


def _first(items: list):
    return items[0] if items else None


def best_iou(completion: str, example: Example, ctx: RewardContext) -> float:
    """The prediction's best IoU over the reference boxes, in original-image pixels; 0 when nothing parses."""
    refs = _reference_boxes(example)
    box = predicted_box(response_text(completion, ctx))
    if box is None:
        return 0.0
    size = _first(ctx.image_sizes) or (ctx.images[0].size if ctx.images else None)
    box = to_pixels(box, ctx.box_frame, size, _first(ctx.resized_sizes))
    return max(iou(box, ref) for ref in refs)


@register("iou")
def iou_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    return best_iou(completion, example, ctx)


@register("iou50")
def iou50_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    return 1.0 if best_iou(completion, example, ctx) >= 0.5 else 0.0


def box_record(completion: str, example: Example, ctx: RewardContext) -> dict:
    """What a report draws of a grounding answer, in original-image pixels: {"reference_boxes": [...],
    "predicted_box": the box "iou" scores (None when the answer holds none), "box_iou": its best IoU with a
    reference (None without a prediction)}; {} when the example has no reference box. The prediction is read and converted
    exactly as the "iou" reward reads it."""
    try:
        refs = _reference_boxes(example)
    except ValueError:
        return {}
    box = predicted_box(response_text(completion, ctx))
    if box is not None:
        size = _first(ctx.image_sizes) or (ctx.images[0].size if ctx.images else None)
        box = [round(v, 2) for v in to_pixels(box, ctx.box_frame, size, _first(ctx.resized_sizes))]
    return {"reference_boxes": refs, "predicted_box": box,
            "box_iou": max(iou(box, ref) for ref in refs) if box is not None else None}
