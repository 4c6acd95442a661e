"""rewards/tool_target.py: the "crop_target" reward and the crop_target_iou it shares with the RL diagnostics.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_rewards_tool_target.py
"""

from __future__ import annotations

import pytest

from data.example import Example
from engine.rollout.trajectory import ToolCallRecord
from rewards import REWARDS, RewardContext, score_batch
from rewards.tool_target import crop_target_iou

CELL = [160, 0, 320, 160]  # a 4x4-grid cell of a 640 px image


def _example(target=CELL) -> Example:
    return Example(question="q", answers=["dots"], images=[b""], origin="t.jsonl:3",
                   metadata={} if target is None else {"target_box": target})


def _call(box, ok=True) -> ToolCallRecord:
    return ToolCallRecord("crop", {"box": box}, ok, None if ok else "bad", box_pixels=box)


def test_best_working_call_counts():
    ex = _example()
    assert crop_target_iou(ex, [_call(CELL)]) == 1.0
    assert crop_target_iou(ex, [_call([0, 0, 160, 160])]) == 0.0  # the neighbouring cell
    # half the cell: IoU (80*160) / (160*160) = 0.5, exactly the threshold (a hit needs more: see below)
    assert crop_target_iou(ex, [_call([160, 0, 240, 160])]) == pytest.approx(0.5)
    assert crop_target_iou(ex, [_call([0, 0, 160, 160]), _call(CELL)]) == 1.0  # the best call of the trajectory
    assert crop_target_iou(ex, [_call(CELL, ok=False)]) == 0.0  # a failed call showed nothing
    assert crop_target_iou(ex, []) == 0.0
    assert crop_target_iou(_example(None), [_call(CELL)]) is None


def test_reward_pays_a_hit_and_explains_missing_targets():
    fn = REWARDS["crop_target"]
    # 3/4 of the cell: IoU (120*160) / (160*160) = 0.75 -> a hit
    assert fn("<answer>dots</answer>", _example(), RewardContext(tool_calls=[_call([160, 0, 280, 160])])) == 1.0
    # the half of the image holding a quadrant: IoU (320*320) / (320*640) = 0.5 exactly, the quadrant at half zoom:
    # no hit (counted as one, a policy cropping one half for every image read as 0.5 "crops on target")
    quadrant = _example([0, 0, 320, 320])
    assert fn("", quadrant, RewardContext(tool_calls=[_call([0, 0, 640, 320])])) == 0.0
    assert fn("", quadrant, RewardContext(tool_calls=[_call([0, 0, 320, 320])])) == 1.0
    # the whole image contains the target but is no closer a look: IoU 1/16
    assert fn("", _example(), RewardContext(tool_calls=[_call([0, 0, 640, 640])])) == 0.0
    with pytest.raises(ValueError, match="t.jsonl:3: 'crop_target' needs metadata target_box"):
        fn("", _example(None), RewardContext(tool_calls=[_call(CELL)]))
    with pytest.raises(ValueError, match=r"target_box \[1, 2\] is not"):
        fn("", _example([1, 2]), RewardContext())
    # in a weighted mix it adds weight x hit, as the zoom preset's option would
    batch = score_batch(["<answer>dots</answer>"], [_example()], [RewardContext(tool_calls=[_call(CELL)])],
                        {"accuracy": 1.0, "crop_target": 0.5})
    assert batch.total == [1.5] and batch.parts["crop_target"] == [1.0]
