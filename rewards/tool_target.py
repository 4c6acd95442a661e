"""Did the crop look where it should? "crop_target" (1 when a working crop covers the example's target region).

Tests: tests/test_rewards_tool_target.py (the reward needs tool calls, which `python -m rewards.explain` cannot give).

The target is `example.metadata["target_box"]`: `[x1, y1, x2, y2]` in original-image pixels, the region a crop
should cover to answer (data/synth_zoom.py writes the bold box's 4x4-grid cell, data/zoom_sft.py the crop its
SFT target makes). A call covers it when the call worked and the IoU of its box (`box_pixels`, original pixels,
engine/rollout/tool_calls.py) with the target is above HIT_IOU (`is_hit`); the best call of the trajectory counts. IoU rather
than "contains": a crop of the whole image contains every target but shows it no larger than the model's own
view, and a crop of the neighbouring cell misses it; both score 0.

The same function, `crop_target_iou`, feeds the RL step's `tools/target_hit_rate` diagnostic
(engine/algo/diagnostics.py) and the evaluation's `crop_hit_rate`, so the reward, when weighted, pays exactly what the
diagnostic counts. It is an optional shaping term (configs/zoom_tools.toml documents it); a run that uses it should
also report its headline figure without it.
"""

from __future__ import annotations

from data.example import Example
from rewards.grounding import iou
from rewards.registry import RewardContext, register

HIT_IOU = 0.5  # a crop of the right grid cell scores 1.0, a neighbouring cell 0


def is_hit(value: float) -> bool:
    """IoU strictly above HIT_IOU. Not the usual Acc@0.5's ">=": a crop of the half of the image that holds a
    quadrant-sized target has IoU exactly 0.5 with it and shows it at half the zoom; counted as hits, a policy that
    cropped one half for every image read as 0.505-0.540 "crops on target" (docs/BENCHMARKS.md, 2026-12-07)."""
    return value > HIT_IOU


def target_box(example: Example) -> list[float] | None:
    """The example's target region (original pixels), or None when its data has none."""
    box = example.metadata.get("target_box")
    if box is None:
        return None
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ValueError(f"{example.origin or 'example'}: metadata target_box {box!r} is not [x1, y1, x2, y2]")
    return [float(v) for v in box]


def crop_target_iou(example: Example, tool_calls) -> float | None:
    """Best IoU of a working call's box with the target (0 when no call worked); None when the example has no
    target. `tool_calls` are records with .ok and .box_pixels (engine/rollout/trajectory.py: ToolCallRecord)."""
    target = target_box(example)
    if target is None:
        return None
    boxes = [c.box_pixels for c in tool_calls if getattr(c, "ok", False) and getattr(c, "box_pixels", None)]
    return max((iou(list(b), target) for b in boxes), default=0.0)


@register("crop_target")
def crop_target_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    value = crop_target_iou(example, ctx.tool_calls)
    if value is None:
        raise ValueError(f"{example.origin or 'example'}: 'crop_target' needs metadata target_box (the zoom data "
                         "writes it: regenerate with python -m data.synth zoom / python -m data.zoom_sft)")
    return 1.0 if is_hit(value) else 0.0
