"""Box frames and box validation (tools/boxes.py). Run: `python -m pytest -q tests/test_tools_boxes.py`.

Frames used below, worked by hand: an 800x600 image resized by the processor to 560x420 (scale 0.7), so
pixel box [80, 60, 400, 300] is resized [56, 42, 280, 210] (x 0.7) and norm1000 [100, 100, 500, 500] (x 1000/800,
x 1000/600). Every one of these numbers is an exact float, so round trips compare with ==.
"""

import math

import pytest

from tools.boxes import args_to_pixels, clamp_box, convert_box, show, validate_box

IMAGE = (800, 600)
RESIZED = (560, 420)
BOX_IN = {"pixels": [80, 60, 400, 300], "resized": [56, 42, 280, 210], "norm1000": [100, 100, 500, 500]}


@pytest.mark.parametrize("src", list(BOX_IN))
@pytest.mark.parametrize("dst", list(BOX_IN))
def test_convert_box_between_every_pair_of_frames(src, dst):
    out = convert_box(BOX_IN[src], src=src, dst=dst, image_size=IMAGE, resized_size=RESIZED)
    assert out == BOX_IN[dst]
    back = convert_box(out, src=dst, dst=src, image_size=IMAGE, resized_size=RESIZED)
    assert back == BOX_IN[src]


def test_convert_box_fractional_values():
    # 0..1000 of a 640x480 image: x * 640/1000, y * 480/1000 -> 0.64 and 0.48 per unit (exact for these inputs)
    out = convert_box([125, 250, 875, 1000], src="norm1000", dst="pixels", image_size=(640, 480))
    assert out == [80.0, 120.0, 560.0, 480.0]


def test_convert_box_rejects_unknown_frame_listing_the_frames():
    with pytest.raises(ValueError, match="pixels, resized, norm1000"):
        convert_box([0, 0, 1, 1], src="norm1", dst="pixels", image_size=IMAGE)


def test_convert_box_resized_frame_needs_the_resized_size():
    with pytest.raises(ValueError, match="resized_size"):
        convert_box([0, 0, 1, 1], src="resized", dst="pixels", image_size=IMAGE)


@pytest.mark.parametrize("box", [[0, 0, 1], [0, 0, 1, "2"], [0, 0, 1, math.nan], None])
def test_convert_box_rejects_malformed_boxes(box):
    with pytest.raises(ValueError, match="4 finite numbers"):
        convert_box(box, src="pixels", dst="norm1000", image_size=IMAGE)


def test_validate_box_accepts_a_box_inside():
    assert validate_box([0, 0, 640, 480], (640, 480)) is None
    assert validate_box((10.5, 20, 30, 40.25), (640, 480)) is None


def test_validate_box_outside_reads_well():
    assert validate_box([0, 0, 900, 50], (640, 480)) == "box [0, 0, 900, 50] is outside the 640x480 image"


def test_small_overshoot_is_clamped_not_rejected():
    # the tolerance is 1 px: -0.5 and 640.8 pass and clamp to the image edges; 642 (2 px over) does not
    box = [-0.5, 0, 640.8, 480]
    assert validate_box(box, (640, 480)) is None
    assert clamp_box(box, (640, 480)) == [0.0, 0.0, 640.0, 480.0]
    assert "outside" in validate_box([0, 0, 642, 480], (640, 480))


def test_a_box_on_the_edge_with_no_area_inside_is_an_error():
    # [640, 0, 640.5, 10] is within tolerance but clamps to zero width
    problem = validate_box([640, 0, 640.5, 10], (640, 480))
    assert problem == "box [640, 0, 640.5, 10] has no area inside the 640x480 image"


@pytest.mark.parametrize("box", [[10, 10, 10, 20], [20, 10, 10, 20], [0, 30, 10, 20]])
def test_validate_box_needs_ordered_corners(box):
    assert "needs x1 < x2 and y1 < y2" in validate_box(box, (640, 480))


@pytest.mark.parametrize(
    "box", [[1, 2, 3], "0,0,1,1", [0, 0, "10", 10], [0, 0, math.inf, 1], [0, 0, math.nan, 1], [True, 0, 1, 1],
            [0, 0, 10**400, 1], [[0, 0, 1, 1]], {"x1": 0}],
)
def test_validate_box_rejects_what_is_not_4_finite_numbers(box):
    assert validate_box(box, (640, 480)).startswith("box must be 4 numbers [x1, y1, x2, y2], got ")


def test_args_to_pixels_moves_box_and_center_from_the_model_frame():
    args = {"box": [100, 100, 500, 500], "center": [500, 500], "factor": 2}
    out = args_to_pixels("crop", args, frame="norm1000", image_size=IMAGE)
    assert out == {"box": [80.0, 60.0, 400.0, 300.0], "center": [400.0, 300.0], "factor": 2}
    assert args["box"] == [100, 100, 500, 500]  # the caller's dict is not changed


def test_args_to_pixels_reports_a_box_outside_in_the_models_own_frame():
    out = args_to_pixels("crop", {"box": [0, 0, 1200, 50]}, frame="norm1000", image_size=IMAGE)
    assert out == "crop: box [0, 0, 1200, 50] is outside the 1000x1000 image"


def test_args_to_pixels_passes_malformed_values_through_for_the_tool_to_report():
    args = {"box": [1, 2, 3], "center": "middle"}
    assert args_to_pixels("crop", args, frame="resized", image_size=IMAGE, resized_size=RESIZED) == args
    assert args_to_pixels("crop", {"box": [1, 2, 3, 4]}, frame="pixels", image_size=IMAGE) == {"box": [1, 2, 3, 4]}


def test_show_renders_values_like_json():
    assert show([900.0, 141.43, True, None, "a"]) == '[900, 141.43, true, null, "a"]'
    assert show([1e300, 1e-5, -0.5]) == "[1e+300, 1e-05, -0.5]"
    assert show("x" * 100) == '"' + "x" * 56 + "..."
