"""The eleven image tools called directly (tools/image_tools.py), without the registry's guards.

Run: `python -m pytest -q tests/test_tools_image.py`. Expected pixels are numpy slices/flips of the input, or colour
arithmetic worked by hand in the comments.
"""

import numpy as np
import pytest
from PIL import Image

from tools import image_tools as T
from tools.registry import TOOLS

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def gradient(width=64, height=48) -> np.ndarray:
    """Every pixel different: R = 4x, G = 5y, B = x + y (all < 256 for 64x48)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([4 * x, 5 * y, x + y], axis=-1).astype(np.uint8)


def two_halves(width=80, height=40, left=RED, right=BLUE) -> Image.Image:
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2], a[:, width // 2 :] = left, right
    return Image.fromarray(a)


def pixels(result: T.ToolResult) -> np.ndarray:
    assert result.ok, result.error
    return np.asarray(result.image)


def test_crop_equals_the_numpy_slice():
    a = gradient()
    assert np.array_equal(pixels(T.crop(Image.fromarray(a), box=[10, 5, 40, 35])), a[5:35, 10:40])


def test_crop_grows_a_fractional_box_to_whole_pixels():
    # floor(10.7)=10, floor(5.6)=5, ceil(39.2)=40, ceil(34.1)=35 -> the same slice as above (rounding would not be)
    a = gradient()
    assert np.array_equal(pixels(T.crop(Image.fromarray(a), box=[10.7, 5.6, 39.2, 34.1])), a[5:35, 10:40])


def test_crop_clamps_a_box_half_a_pixel_outside():
    a = gradient()
    assert np.array_equal(pixels(T.crop(Image.fromarray(a), box=[-0.5, 0, 64.5, 48])), a)


def test_zoom_in_crops_around_the_center_and_scales_back_up():
    # factor 2 at [20, 20] of an 80x40 red|blue image: region x 0..40, y 10..30 is all red. Output columns < 76 read
    # only source columns < 40 (bicubic reads 2 source px either side), so they are exactly red.
    out = pixels(T.zoom(two_halves(), factor=2, center=[20, 20]))
    assert out.shape == (40, 80, 3)
    assert (out[:, :76] == RED).all()


def test_zoom_keeps_the_region_inside_the_image():
    # factor 4 at the corner [0, 0]: the 20x10 region starts at (0, 0), not at (-10, -5); all red
    out = pixels(T.zoom(two_halves(), factor=4, center=[0, 0]))
    assert (out[:, :76] == RED).all()


def test_zoom_default_center_and_factor_one_is_identity():
    a = gradient()
    assert np.array_equal(pixels(T.zoom(Image.fromarray(a), factor=1)), a)


def test_zoom_out_pads_with_white():
    # factor 0.5 of an 80x40 red image: a 40x20 red image pasted at (20, 10) on a white 80x40 canvas
    out = pixels(T.zoom(Image.new("RGB", (80, 40), RED), factor=0.5))
    assert out.shape == (40, 80, 3)
    assert tuple(out[0, 0]) == WHITE and tuple(out[20, 19]) == WHITE and tuple(out[9, 40]) == WHITE
    assert (out[10:30, 20:60] == RED).all()


def test_rotate_quarter_turns_equal_numpy_rot90():
    a = gradient(6, 4)
    assert np.array_equal(pixels(T.rotate(Image.fromarray(a), angle=90)), np.rot90(a))  # counter-clockwise
    assert np.array_equal(pixels(T.rotate(Image.fromarray(a), angle=-90)), np.rot90(a, -1))
    assert np.array_equal(pixels(T.rotate(Image.fromarray(a), angle=180)), a[::-1, ::-1])


def test_rotate_expands_and_fills_corners_white():
    # 100x100 at 45 degrees needs a 100*sqrt(2) ~ 142 px canvas; its corners are outside the rotated square
    out = pixels(T.rotate(Image.new("RGB", (100, 100), RED), angle=45))
    assert 141 <= out.shape[0] <= 143 and out.shape[0] == out.shape[1]
    assert tuple(out[0, 0]) == WHITE and tuple(out[out.shape[0] // 2, out.shape[1] // 2]) == RED


def test_flip_equals_numpy_flips():
    a = gradient()
    assert np.array_equal(pixels(T.flip(Image.fromarray(a), direction="horizontal")), a[:, ::-1])
    assert np.array_equal(pixels(T.flip(Image.fromarray(a), direction="vertical")), a[::-1])


def test_brightness_scales_every_channel():
    # brightness blends with black: (200, 100, 50) * 0.5 = (100, 50, 25)
    out = pixels(T.brightness(Image.new("RGB", (4, 4), (200, 100, 50)), factor=0.5))
    assert (out == (100, 50, 25)).all()


def test_contrast_stretches_around_the_mean_grey():
    # mean grey of (200, 100, 50) is L = (200*299 + 100*587 + 50*114) / 1000 = 124.2 -> 124;
    # factor 2: 124 + 2 * (c - 124) -> 276, 76, -24 -> clipped to (255, 76, 0)
    out = pixels(T.contrast(Image.new("RGB", (4, 4), (200, 100, 50)), factor=2))
    assert (out == (255, 76, 0)).all()


def test_blur_softens_a_step_symmetrically():
    # a 0|255 step at column 10: the Gaussian is symmetric, so column 9 + column 10 = 255, and far columns stay put
    a = np.zeros((10, 20), np.uint8)
    a[:, 10:] = 255
    row = pixels(T.blur(Image.fromarray(a), radius=2))[5].astype(int)
    assert row[0] == 0 and row[19] == 255
    assert 0 < row[9] < 128 < row[10] < 255 and row[9] + row[10] == 255
    assert np.array_equal(pixels(T.blur(Image.fromarray(a), radius=0)), a)


def test_sharpen_pushes_a_bright_pixel_away_from_its_smoothed_value():
    # PIL smooths with kernel [[1,1,1],[1,5,1],[1,1,1]]/13: centre (8*100 + 5*150)/13 = 119.2 -> 119;
    # factor 2 extrapolates: 119 + 2 * (150 - 119) = 181. The border rows are copied unchanged.
    image = Image.new("L", (5, 5), 100)
    image.putpixel((2, 2), 150)
    out = pixels(T.sharpen(image))
    assert out[2, 2] == 181 and (out[0] == 100).all()
    assert np.array_equal(pixels(T.sharpen(image, factor=1)), np.asarray(image))


def test_grayscale_uses_itu_601_luma():
    # L = 0.299 R + 0.587 G + 0.114 B: red 76.2 -> 76, green 149.7 -> 150, blue 29.1 -> 29
    out = T.grayscale(Image.fromarray(np.array([[RED, (0, 255, 0), BLUE]], np.uint8)))
    assert out.image.mode == "L"
    assert pixels(out).tolist() == [[76, 150, 29]]


@pytest.mark.parametrize(
    "args, size",
    [
        ({"width": 32}, (32, 24)),  # 64x48 halved, aspect kept
        ({"height": 96}, (128, 96)),
        ({"width": 100, "height": 100}, (100, 75)),  # fit inside: scale min(100/64, 100/48) = 1.5625
        ({"width": 10, "height": 20, "keep_aspect": False}, (10, 20)),
        ({"height": 20, "keep_aspect": False}, (64, 20)),  # width unchanged
        ({"width": 32.0}, (32, 24)),  # a whole float is a whole number
    ],
)
def test_resize_sizes(args, size):
    out = T.resize(Image.new("RGB", (64, 48), (200, 100, 50)), **args)
    assert out.image.size == size
    assert (pixels(out) == (200, 100, 50)).all()  # a solid colour stays that colour


def test_info_text_is_exact():
    # 4x2, left half black, right half 253: mean 126.5 rounds half up to 127 (Python's round() would give 126)
    image = two_halves(4, 2, left=(0, 0, 0), right=(253, 253, 253))
    assert T.info(image).text == "size 4x2 pixels, mode RGB, mean colour RGB(127, 127, 127)"
    assert T.info(Image.new("L", (3, 5), 7)).text == "size 3x5 pixels, mode L, mean colour RGB(7, 7, 7)"


def test_palette_and_alpha_images_are_converted_to_rgb_first():
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 128))
    assert T.info(image.convert("P")).text.startswith("size 8x8 pixels, mode RGB")
    assert pixels(T.blur(image, radius=1)).shape == (8, 8, 3)


BAD_CALLS = [
    (T.crop, {"box": [0, 0, 900, 50]}, "crop: box [0, 0, 900, 50] is outside the 640x480 image"),
    (T.crop, {"box": [0, 0, 10]}, "crop: box must be 4 numbers [x1, y1, x2, y2], got [0, 0, 10]"),
    (T.crop, {}, 'crop: missing argument "box"; it takes box'),
    (T.crop, {"box": [0, 0, 9, 9], "pad": 1}, 'crop: unknown argument "pad"; it takes box'),
    (T.zoom, {"factor": 0}, "zoom: factor must be > 0 and <= 16, got 0"),
    (T.zoom, {"factor": 17}, "zoom: factor must be > 0 and <= 16, got 17"),
    (T.zoom, {"factor": 2, "center": [700, 10]}, "zoom: center [700, 10] is outside the 640x480 image"),
    (T.zoom, {"factor": 2, "center": "middle"}, 'zoom: center must be 2 numbers [x, y], got "middle"'),
    (T.rotate, {"angle": "90"}, 'rotate: angle must be a number, got "90"'),
    (T.rotate, {"angle": 1000}, "rotate: angle must be >= -360 and <= 360, got 1000"),
    (T.flip, {"direction": "diagonal"}, 'flip: direction must be "horizontal" or "vertical", got "diagonal"'),
    (T.flip, {"direction": ["horizontal"]}, 'flip: direction must be "horizontal" or "vertical", got ["horizontal"]'),
    (T.brightness, {"factor": 0}, "brightness: factor must be > 0 and <= 10, got 0"),
    (T.brightness, {"factor": 11}, "brightness: factor must be > 0 and <= 10, got 11"),
    (T.brightness, {"factor": float("nan")}, "brightness: factor must be a number, got nan"),
    (T.brightness, {"factor": True}, "brightness: factor must be a number, got true"),
    (T.contrast, {"factor": -1}, "contrast: factor must be > 0 and <= 10, got -1"),
    (T.blur, {"radius": 51}, "blur: radius must be >= 0 and <= 50, got 51"),
    (T.blur, {"radius": None}, "blur: radius must be a number, got null"),
    (T.sharpen, {"factor": 1e300}, "sharpen: factor must be > 0 and <= 10, got 1e+300"),
    (T.grayscale, {"mode": "L"}, 'grayscale: unknown argument "mode"; it takes no arguments'),
    (T.resize, {}, "resize: give width, height or both"),
    (T.resize, {"width": 0}, "resize: width must be >= 1 and <= 16777216, got 0"),
    (T.resize, {"width": 10.5}, "resize: width must be a whole number of pixels, got 10.5"),
    (T.resize, {"width": 10, "keep_aspect": "yes"}, 'resize: keep_aspect must be true or false, got "yes"'),
    (T.info, {"verbose": True}, 'info: unknown argument "verbose"; it takes no arguments'),
]


@pytest.mark.parametrize("fn, args, error", BAD_CALLS, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_arguments_give_an_error_result(fn, args, error):
    result = fn(Image.new("RGB", (640, 480)), **args)
    assert (result.error, result.image, result.text, result.ok) == (error, None, None, False)


def test_resize_past_the_ceiling_is_refused_before_allocating(monkeypatch):
    def no_resize(*args, **kwargs):
        raise AssertionError("resize should not have been attempted")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    result = T.resize(Image.new("RGB", (64, 48)), width=100000, height=100000, keep_aspect=False)
    assert result.error == "resize: the output would be 100000x100000 = 10000000000 pixels, over the limit of 16777216"


def test_every_tool_has_a_one_line_description():
    assert all(e.fn.__doc__ and e.fn.__doc__.strip() for e in TOOLS.entries())
    assert all(e.name == e.fn.__name__ for e in TOOLS.entries() if e.origin == T.__name__)
