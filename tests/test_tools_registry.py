"""The registry: names and aliases, `call_tool` never raising, output guards, ToolLimits, ToolStats.

Run: `python -m pytest -q tests/test_tools_registry.py`. Guard sizes are worked by hand in the comments.
"""

import numpy as np
import pytest
from PIL import Image

from tools.base import PIXEL_CEILING, ToolResult, tool
from tools.registry import TOOLS, ToolLimits, ToolStats, aliases, call_tool, canonical_name, tool_fn

# seed 000's tool names (its system prompt's), each the alias of one built-in tool
SEED_000 = {"crop_image": "crop", "zoom_image": "zoom", "rotate_image": "rotate", "flip_image": "flip",
            "adjust_brightness": "brightness", "adjust_contrast": "contrast", "apply_blur": "blur",
            "apply_sharpen": "sharpen", "convert_grayscale": "grayscale", "resize_image": "resize",
            "get_image_info": "info"}


def gradient(width, height) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def test_seed_000_names_call_the_registered_tools():
    for alias, name in SEED_000.items():
        assert aliases()[alias] == name and canonical_name(alias) == name and tool_fn(alias) is TOOLS[name]
    assert all(canonical_name(name) == name for name in TOOLS.names())
    assert canonical_name("paint") is None and canonical_name(3) is None


def test_a_tool_registered_from_outside_is_called_by_name_and_alias(registered):
    @tool
    def invert(image):
        """Swap black and white."""
        return ToolResult(image=image.point(lambda v: 255 - v))

    registered(TOOLS, "invert", invert, aliases=("negate",))
    out = call_tool("negate", {}, Image.new("RGB", (64, 64), (10, 20, 30)))
    assert out.ok and out.image.getpixel((0, 0)) == (245, 235, 225)
    assert call_tool("invert", {"x": 1}, Image.new("RGB", (64, 64))).error == 'invert: unknown argument "x"; it takes ' \
                                                                              "no arguments"


def test_an_alias_runs_the_tool_and_its_errors_use_the_called_name():
    image = Image.new("RGB", (64, 64), (200, 100, 50))
    assert call_tool("get_image_info", {}, image).text == "size 64x64 pixels, mode RGB, mean colour RGB(200, 100, 50)"
    error = call_tool("adjust_brightness", {"factor": 0}, image).error
    assert error == "adjust_brightness: factor must be > 0 and <= 10, got 0"


@pytest.mark.parametrize("name", ["nope", "", None, 42, ["crop"]])
def test_unknown_tools_are_rejected_listing_the_known_ones(name):
    error = call_tool(name, {}, Image.new("RGB", (64, 64))).error
    assert error.startswith("unknown tool ") and error.endswith("known tools: " + ", ".join(TOOLS.names()))


@pytest.mark.parametrize("args", [[1, 2], "factor=2", None, {1: 2}])
def test_arguments_that_are_not_a_keyword_object_give_an_error(args):
    result = call_tool("zoom", args, Image.new("RGB", (64, 64)))
    assert not result.ok and result.error.startswith("zoom: ")


def test_an_exception_inside_a_tool_becomes_an_error_naming_it(registered):
    def boom(image, **args):
        raise RuntimeError("boom")

    registered(TOOLS, "boom", boom)
    assert call_tool("boom", {"radius": 1}, Image.new("RGB", (64, 64))).error == "boom: failed (RuntimeError: boom)"


def test_a_crop_between_the_bounds_is_returned_untouched():
    a = gradient(640, 480)
    out = call_tool("crop", {"box": [100, 50, 400, 250]}, Image.fromarray(a))  # 300x200: 28 <= 200 <= 448
    assert np.array_equal(np.asarray(out.image), a[50:250, 100:400])


def test_a_tiny_crop_is_upscaled_to_the_minimum_side_keeping_aspect():
    # 10x20 -> short side 10 < 28: scale 2.8 -> 28x56
    out = call_tool("crop", {"box": [0, 0, 10, 20]}, Image.new("RGB", (640, 480), (9, 8, 7)))
    assert out.image.size == (28, 56)
    assert (np.asarray(out.image) == (9, 8, 7)).all()


def test_a_large_crop_is_downsized_to_448_short_side_keeping_aspect():
    # 1000x600 -> short side 600 > 448: scale 448/600 -> 1000 * 0.7467 = 746.7 -> 747x448
    out = call_tool("crop", {"box": [100, 100, 1100, 700]}, Image.new("RGB", (1200, 800)))
    assert out.image.size == (747, 448)
    tall = call_tool("rotate", {"angle": 90}, Image.new("RGB", (1000, 600)))  # 600x1000 -> 448x747
    assert tall.image.size == (448, 747)


def test_the_pixel_cap_rejects_a_large_output():
    # 200x100 = 20000 pixels > 10000
    limits = ToolLimits(max_output_pixels=10_000, min_crop_side=28, max_crop_short_side=448)
    error = call_tool("brightness", {"factor": 2}, Image.new("RGB", (200, 100)), limits).error
    assert error == "brightness: the output would be 200x100 = 20000 pixels, over the limit of 10000"


def test_the_pixel_cap_is_checked_before_upscaling():
    # a 1x150 crop would be upscaled to 28x4200 = 117600 pixels: over a 100000 cap, refused without resizing
    limits = ToolLimits(max_output_pixels=100_000)
    error = call_tool("crop", {"box": [0, 0, 1, 150]}, Image.new("RGB", (640, 480)), limits).error
    assert error == "crop: the output would be 28x4200 = 117600 pixels, over the limit of 100000"


def test_resize_to_100000_squared_is_refused_without_allocating(monkeypatch):
    def no_resize(*args, **kwargs):
        raise AssertionError("resize should not have been attempted")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    result = call_tool("resize", {"width": 100000, "height": 100000}, Image.new("RGB", (64, 48)))
    # keep_aspect fits 64x48 into 100000x100000: scale 1562.5 -> 100000x75000
    assert result.error == "resize: the output would be 100000x75000 = 7500000000 pixels, over the limit of 16777216"


def test_a_sliver_thinner_than_qwen_accepts_is_an_error():
    # 640x1: the long side is 640 times the short side, over 200
    error = call_tool("crop", {"box": [0, 0, 640, 1]}, Image.new("RGB", (640, 480))).error
    assert error == "crop: the output would be 640x1, over 200 times longer than wide"


def test_text_results_pass_through_the_guards():
    assert call_tool("info", {}, Image.new("RGB", (5000, 10))).text.startswith("size 5000x10 pixels")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_output_pixels": PIXEL_CEILING + 1}, {"max_output_pixels": 0}, {"min_crop_side": 0},
     {"min_crop_side": 500}, {"max_aspect_ratio": 0.5}, {"max_calls": -1}],
)
def test_tool_limits_reject_settings_that_cannot_work(kwargs):
    with pytest.raises(ValueError):
        ToolLimits(**kwargs)


def test_tool_stats_counts_calls_successes_and_errors_per_tool():
    stats = ToolStats()
    stats.record("crop", ToolResult(image=Image.new("RGB", (1, 1))))
    stats.record("crop", ToolResult(error="crop: bad box"))
    stats.record("adjust_brightness", ToolResult(image=Image.new("RGB", (1, 1))))
    stats.record("made_up", ToolResult(error="unknown tool"))
    # 4 calls, 2 successes -> success rate 0.5; aliases count under the canonical name, inventions under "unknown"
    assert stats.as_metrics() == {
        "tools/calls": 4.0,
        "tools/errors": 2.0,
        "tools/success_rate": 0.5,
        "tools/brightness": 1.0,
        "tools/crop": 2.0,
        "tools/unknown": 1.0,
        "tools/crop/errors": 1.0,
        "tools/unknown/errors": 1.0,
    }
    assert ToolStats().as_metrics() == {"tools/calls": 0.0, "tools/errors": 0.0, "tools/success_rate": 0.0}


def test_cap_applies_after_the_448_rule_so_large_photo_crops_work():
    # A 12 MP photo: a 3000x3000 crop is 9 M pixels (over the 4.19 M default cap) before the 448 px rule,
    # but the model sees 448x448 after it, so the crop must succeed at exactly 448x448.
    from PIL import Image

    from tools.registry import ToolLimits, call_tool

    photo = Image.new("RGB", (4000, 3000), (10, 20, 30))
    result = call_tool("crop", {"box": [0, 0, 3000, 3000]}, photo, ToolLimits())
    assert result.error is None and result.image.size == (448, 448)
