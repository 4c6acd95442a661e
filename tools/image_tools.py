"""The eleven image tools of seed 000, as plain functions `fn(image, **args) -> ToolResult`, each registered
under its name and seed 000's alias (tools/registry.py; tools/base.py has what they are made of).

Each tool checks its own arguments and answers a mistake with `ToolResult(error="<tool>: <what was wrong>")`
instead of raising, because that text is what the model reads as the tool's output. Coordinates (crop's box,
zoom's center) are ORIGINAL-image pixels: conversion from a model's box frame happens before the call
(tools/boxes.py). The configurable guards (pixel cap, 28 px minimum side, 448 px rule) are applied to every output
by `tools.registry.call_tool`; here a tool only refuses, before allocating, to make more than PIXEL_CEILING pixels.

    from tools.image_tools import zoom
    result = zoom(image, factor=2)  # result.image, or result.error

Run the tests: `python -m pytest -q tests/test_tools_image.py`.
"""

from __future__ import annotations

import math

from PIL import Image, ImageEnhance, ImageFilter, ImageStat

from tools.base import PIXEL_CEILING, RESAMPLE, WHITE, BadArgument, ToolResult, over_pixel_limit, tool
from tools.boxes import clamp_box, finite_number, show, validate_box
from tools.registry import register

MAX_ZOOM = 16.0
MAX_ENHANCE = 10.0  # brightness / contrast / sharpen factors
MAX_BLUR_RADIUS = 50.0
FLIPS = {"horizontal": Image.Transpose.FLIP_LEFT_RIGHT, "vertical": Image.Transpose.FLIP_TOP_BOTTOM}


def _number(name: str, value, low: float, high: float, *, above_low: bool = False) -> float:
    """value as a float in [low, high] (or (low, high] with above_low); else BadArgument."""
    number = finite_number(value)
    if number is None:
        raise BadArgument(f"{name} must be a number, got {show(value)}")
    if number < low or number > high or (above_low and number == low):
        bound = f"> {show(low)}" if above_low else f">= {show(low)}"
        raise BadArgument(f"{name} must be {bound} and <= {show(high)}, got {show(value)}")
    return number


def _whole(name: str, value, low: int, high: int) -> int:
    number = _number(name, value, low, high)
    if not number.is_integer():
        raise BadArgument(f"{name} must be a whole number of pixels, got {show(value)}")
    return int(number)


def _point(name: str, value, size: tuple[int, int]) -> tuple[float, float]:
    width, height = size
    point = [finite_number(v) for v in value] if isinstance(value, (list, tuple)) and len(value) == 2 else None
    if point is None or None in point:
        raise BadArgument(f"{name} must be 2 numbers [x, y], got {show(value)}")
    if not (0 <= point[0] <= width and 0 <= point[1] <= height):
        raise BadArgument(f"{name} {show(value)} is outside the {width}x{height} image")
    return point[0], point[1]


def _check_pixels(width: int, height: int) -> None:
    problem = over_pixel_limit(width, height, PIXEL_CEILING)
    if problem:
        raise BadArgument(problem)


@register("crop", aliases=("crop_image",))  # seed 000 calls it crop_image
@tool
def crop(image, box):
    """Cut out the region box [x1, y1, x2, y2] (x1 < x2, y1 < y2).

    The box is in original-image pixels; a box at most 1 px outside the image is clamped to it.
    """
    problem = validate_box(box, image.size)
    if problem:
        raise BadArgument(problem)
    x1, y1, x2, y2 = clamp_box(box, image.size)
    # grow a fractional box outwards to whole pixels, so the crop covers all that was asked for
    return ToolResult(image=image.crop((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))))


@register("zoom", aliases=("zoom_image",))  # seed 000 calls it zoom_image
@tool
def zoom(image, factor, center=None):
    """Zoom by factor (> 0 and <= 16; above 1 zooms in) around center [x, y] (default: the middle); keeps the size.

    The center is in original-image pixels. Zooming in keeps the region inside the image; zooming out pads with white.
    """
    f = _number("factor", factor, 0, MAX_ZOOM, above_low=True)
    width, height = image.size
    cx, cy = (width / 2, height / 2) if center is None else _point("center", center, image.size)
    if f >= 1:  # crop a width/f x height/f region (kept inside the image) and scale it back up
        region_w, region_h = width / f, height / f
        x1 = min(max(cx - region_w / 2, 0.0), width - region_w)
        y1 = min(max(cy - region_h / 2, 0.0), height - region_h)
        return ToolResult(image=image.resize((width, height), RESAMPLE, box=(x1, y1, x1 + region_w, y1 + region_h)))
    # zoom out: shrink, then paste onto a white canvas with `center` in the middle
    small = image.resize((max(1, round(width * f)), max(1, round(height * f))), RESAMPLE)
    canvas = Image.new(image.mode, (width, height), WHITE[image.mode])
    canvas.paste(small, (round(width / 2 - cx * f), round(height / 2 - cy * f)))
    return ToolResult(image=canvas)


@register("rotate", aliases=("rotate_image",))  # seed 000 calls it rotate_image
@tool
def rotate(image, angle):
    """Rotate by angle degrees counter-clockwise (-360 to 360); the canvas grows to fit, new corners are white."""
    degrees = _number("angle", angle, -360, 360)
    cos, sin = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    width, height = image.size
    _check_pixels(math.ceil(width * cos + height * sin) + 1, math.ceil(width * sin + height * cos) + 1)  # upper bound
    return ToolResult(image=image.rotate(degrees, RESAMPLE, expand=True, fillcolor=WHITE[image.mode]))


@register("flip", aliases=("flip_image",))  # seed 000 calls it flip_image
@tool
def flip(image, direction):
    """Mirror the image: direction "horizontal" (left-right) or "vertical" (top-bottom)."""
    if not isinstance(direction, str) or direction not in FLIPS:
        raise BadArgument(f'direction must be "horizontal" or "vertical", got {show(direction)}')
    return ToolResult(image=image.transpose(FLIPS[direction]))


@register("brightness", aliases=("adjust_brightness",))  # seed 000 calls it adjust_brightness
@tool
def brightness(image, factor):
    """Scale brightness by factor (> 0 and <= 10; 1 keeps the image, 2 doubles it)."""
    f = _number("factor", factor, 0, MAX_ENHANCE, above_low=True)
    return ToolResult(image=ImageEnhance.Brightness(image).enhance(f))


@register("contrast", aliases=("adjust_contrast",))  # seed 000 calls it adjust_contrast
@tool
def contrast(image, factor):
    """Scale contrast around the mean grey by factor (> 0 and <= 10; 1 keeps the image)."""
    f = _number("factor", factor, 0, MAX_ENHANCE, above_low=True)
    return ToolResult(image=ImageEnhance.Contrast(image).enhance(f))


@register("blur", aliases=("apply_blur",))  # seed 000 calls it apply_blur
@tool
def blur(image, radius):
    """Gaussian blur of the given radius in pixels (0 to 50)."""
    r = _number("radius", radius, 0, MAX_BLUR_RADIUS)
    return ToolResult(image=image.filter(ImageFilter.GaussianBlur(r)))


@register("sharpen", aliases=("apply_sharpen",))  # seed 000 calls it apply_sharpen
@tool
def sharpen(image, factor=2.0):
    """Sharpen edges by factor (> 0 and <= 10, default 2; 1 keeps the image, below 1 softens)."""
    f = _number("factor", factor, 0, MAX_ENHANCE, above_low=True)
    return ToolResult(image=ImageEnhance.Sharpness(image).enhance(f))


@register("grayscale", aliases=("convert_grayscale",))  # seed 000 calls it convert_grayscale
@tool
def grayscale(image):
    """Convert to grey levels (ITU-R 601 luma)."""
    return ToolResult(image=image.convert("L"))


@register("resize", aliases=("resize_image",))  # seed 000 calls it resize_image
@tool
def resize(image, width=None, height=None, keep_aspect=True):
    """Resize to width and/or height pixels; with keep_aspect (default true) fit inside them keeping the shape."""
    if width is None and height is None:
        raise BadArgument("give width, height or both")
    if not isinstance(keep_aspect, bool):
        raise BadArgument(f"keep_aspect must be true or false, got {show(keep_aspect)}")
    old_w, old_h = image.size
    new_w = old_w if width is None else _whole("width", width, 1, PIXEL_CEILING)
    new_h = old_h if height is None else _whole("height", height, 1, PIXEL_CEILING)
    if keep_aspect:
        scale = min(new_w / old_w if width is not None else math.inf, new_h / old_h if height is not None else math.inf)
        new_w, new_h = max(1, round(old_w * scale)), max(1, round(old_h * scale))
    _check_pixels(new_w, new_h)  # before allocating: 100000x100000 is refused here
    return ToolResult(image=image.resize((new_w, new_h), RESAMPLE))


@register("info", aliases=("get_image_info",))  # seed 000 calls it get_image_info
@tool
def info(image):
    """Describe the image: size, colour mode and mean colour."""
    means = ImageStat.Stat(image.convert("RGB")).mean
    red, green, blue = (math.floor(m + 0.5) for m in means)  # round half up
    size = f"{image.width}x{image.height}"
    return ToolResult(text=f"size {size} pixels, mode {image.mode}, mean colour RGB({red}, {green}, {blue})")
