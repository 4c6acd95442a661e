"""Grounding rewards (rewards/grounding.py): IoU by hand, box parsing, and frame conversion to pixels."""

import pytest

from data.example import Example
from rewards import REWARDS, RewardContext
from rewards.grounding import iou, parse_box, to_pixels


@pytest.mark.parametrize("a, b, expected", [
    ([10, 10, 50, 50], [10, 10, 50, 50], 1.0),  # identical
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges: zero-area intersection
    ([0, 0, 100, 100], [25, 25, 75, 75], 0.25),  # nested: inter 50*50 = 2500, union 100*100 = 10000
    ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),  # half shifted: inter 5*10 = 50, union 100 + 100 - 50 = 150
    ([50, 10, 10, 50], [10, 10, 50, 50], 0.0),  # invalid: x1 >= x2
    ([10, 10, 50, 10], [10, 10, 50, 50], 0.0),  # invalid: y1 >= y2 (zero height)
])
def test_iou_by_hand(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)


def test_to_pixels_frames():
    # image 200 x 100: norm1000 x * 200 / 1000, y * 100 / 1000
    assert to_pixels([250, 500, 750, 1000], "norm1000", (200, 100)) == pytest.approx([50, 50, 150, 100])
    # resized to 400 x 200: x * 200 / 400, y * 100 / 200
    assert to_pixels([100, 100, 300, 200], "resized", (200, 100), (400, 200)) == pytest.approx([50, 50, 150, 100])
    assert to_pixels([1, 2, 3, 4], "pixels", None) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="needs ctx.image_sizes"):
        to_pixels([1, 2, 3, 4], "norm1000", None)
    with pytest.raises(ValueError, match="unknown box frame"):
        to_pixels([1, 2, 3, 4], "relative", (10, 10))


def test_parse_box_last_box_wins():
    assert parse_box('[0, 0, 1, 1] then {"bbox": [10.5, 10, 50, 50]}') == [10.5, 10, 50, 50]
    assert parse_box("[1, 2, 3]") is None
    assert parse_box("[x1, y1, x2, y2]") is None


def _ex(boxes=(), answers=("",)):
    return Example(question="where?", answers=list(answers), images=[], boxes=[list(b) for b in boxes])


REF = [50, 50, 150, 100]


def test_iou_reward_converts_norm1000_predictions_to_pixels():
    completion = "<think>the cat</think><answer>[250, 500, 750, 1000]</answer>"
    ctx = RewardContext(box_frame="norm1000", image_sizes=[(200, 100)])
    assert REWARDS["iou"](completion, _ex([REF]), ctx) == pytest.approx(1.0)
    # the same numbers read as pixels: [250, 500, 750, 1000] is disjoint from [50, 50, 150, 100]
    assert REWARDS["iou"](completion, _ex([REF]), RewardContext()) == 0.0


def test_iou_reward_parsing_and_references():
    ctx = RewardContext()
    two_refs = _ex([[0, 0, 10, 10], REF])
    assert REWARDS["iou"]('<answer>{"bbox": [50, 50, 150, 100]}</answer>', two_refs, ctx) == 1.0  # best ref
    assert REWARDS["iou"]("The box is [50, 50, 150, 100].", two_refs, ctx) == 1.0  # no tag: whole completion
    # an empty answer tag does not fall back to a box in the thinking
    assert REWARDS["iou"]("<think>[50, 50, 150, 100]</think><answer></answer>", two_refs, ctx) == 0.0
    assert REWARDS["iou"]("<answer>[x1, y1, x2, y2]</answer>", two_refs, ctx) == 0.0
    from_answer = _ex(answers=["[0, 0, 100, 100]"])  # no example.boxes: the reference is parsed from the answer
    assert REWARDS["iou"]("<answer>[25, 25, 75, 75]</answer>", from_answer, ctx) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no reference box"):
        REWARDS["iou"]("<answer>[0, 0, 1, 1]</answer>", _ex(answers=["cat"]), ctx)


def test_iou50_threshold():
    ex, ctx = _ex([[0, 0, 10, 20]]), RewardContext()
    assert REWARDS["iou50"]("<answer>[0, 0, 10, 10]</answer>", ex, ctx) == 1.0  # inter 100 / union 200 = 0.5
    assert REWARDS["iou50"]("<answer>[0, 0, 10, 9]</answer>", ex, ctx) == 0.0  # 90 / 200 = 0.45
