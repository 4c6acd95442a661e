"""The eleven image tools of seed 000, as plain functions `fn(image, **args) -> ToolResult`.

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

import functools
import inspect
import math
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageFilter, ImageStat

from tools.boxes import clamp_box, finite_number, show, validate_box

PIXEL_CEILING = 4096 * 4096  # no tool allocates more (64 MB of RGB); ToolLimits.max_output_pixels must not exceed it
MAX_ZOOM = 16.0
MAX_ENHANCE = 10.0  # brightness / contrast / sharpen factors
MAX_BLUR_RADIUS = 50.0
RESAMPLE = Image.Resampling.BICUBIC
WHITE = {"RGB": (255, 255, 255), "L": 255}  # the modes tools work in; any other input is converted to RGB first
FLIPS = {"horizontal": Image.Transpose.FLIP_LEFT_RIGHT, "vertical": Image.Transpose.FLIP_TOP_BOTTOM}


@dataclass
class ToolResult:
    image: Image.Image | None = None
    text: str | None = None
    error: str | None = None  # shown to the model as the tool's output

    @property
    def ok(self) -> bool:
        return self.error is None


class BadArgument(ValueError):
    """An argument the model got wrong; the message (the tool adds its name) is shown to the model."""


def tool(fn):
    """Make fn(image, *, named args) a tool: unknown or missing arguments and BadArgument become error results."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # [0] is the image
    names = [p.name for p in params]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    takes = f"it takes {', '.join(names)}" if names else "it takes no arguments"

    @functools.wraps(fn)
    def run(image: Image.Image, /, **args) -> ToolResult:  # positional: an "image" argument is just unknown
        unknown = [name for name in args if name not in names]
        if unknown:
            return ToolResult(error=f"{fn.__name__}: unknown argument {show(unknown[0])}; {takes}")
        missing = [name for name in required if name not in args]
        if missing:
            return ToolResult(error=f"{fn.__name__}: missing argument {show(missing[0])}; {takes}")
        if image.mode not in WHITE:
            image = image.convert("RGB")
        try:
            return fn(image, **args)
        except BadArgument as exc:
            return ToolResult(error=f"{fn.__name__}: {exc}")

    return run


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


def over_pixel_limit(width: int, height: int, limit: int) -> str | None:
    """Why a width x height output is refused (more than `limit` pixels), or None."""
    if width * height <= limit:
        return None
    return f"the output would be {width}x{height} = {width * height} pixels, over the limit of {limit}"


def _check_pixels(width: int, height: int) -> None:
    problem = over_pixel_limit(width, height, PIXEL_CEILING)
    if problem:
        raise BadArgument(problem)


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


@tool
def rotate(image, angle):
    """Rotate by angle degrees counter-clockwise (-360 to 360); the canvas grows to fit, new corners are white."""
    degrees = _number("angle", angle, -360, 360)
    cos, sin = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    width, height = image.size
    _check_pixels(math.ceil(width * cos + height * sin) + 1, math.ceil(width * sin + height * cos) + 1)  # upper bound
    return ToolResult(image=image.rotate(degrees, RESAMPLE, expand=True, fillcolor=WHITE[image.mode]))


@tool
def flip(image, direction):
    """Mirror the image: direction "horizontal" (left-right) or "vertical" (top-bottom)."""
    if not isinstance(direction, str) or direction not in FLIPS:
        raise BadArgument(f'direction must be "horizontal" or "vertical", got {show(direction)}')
    return ToolResult(image=image.transpose(FLIPS[direction]))


@tool
def brightness(image, factor):
    """Scale brightness by factor (> 0 and <= 10; 1 keeps the image, 2 doubles it)."""
    f = _number("factor", factor, 0, MAX_ENHANCE, above_low=True)
    return ToolResult(image=ImageEnhance.Brightness(image).enhance(f))


@tool
def contrast(image, factor):
    """Scale contrast around the mean grey by factor (> 0 and <= 10; 1 keeps the image)."""
    f = _number("factor", factor, 0, MAX_ENHANCE, above_low=True)
    return ToolResult(image=ImageEnhance.Contrast(image).enhance(f))


@tool
def blur(image, radius):
    """Gaussian blur of the given radius in pixels (0 to 50)."""
    r = _number("radius", radius, 0, MAX_BLUR_RADIUS)
    return ToolResult(image=image.filter(ImageFilter.GaussianBlur(r)))


@tool
def sharpen(image, factor=2.0):
    """Sharpen edges by factor (> 0 and <= 10, default 2; 1 keeps the image, below 1 softens)."""
    f = _number("factor", factor, 0, MAX_ENHANCE, above_low=True)
    return ToolResult(image=ImageEnhance.Sharpness(image).enhance(f))


@tool
def grayscale(image):
    """Convert to grey levels (ITU-R 601 luma)."""
    return ToolResult(image=image.convert("L"))


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


@tool
def info(image):
    """Describe the image: size, colour mode and mean colour."""
    means = ImageStat.Stat(image.convert("RGB")).mean
    red, green, blue = (math.floor(m + 0.5) for m in means)  # round half up
    size = f"{image.width}x{image.height}"
    return ToolResult(text=f"size {size} pixels, mode {image.mode}, mean colour RGB({red}, {green}, {blue})")


ALL_TOOLS = [crop, zoom, rotate, flip, brightness, contrast, blur, sharpen, grayscale, resize, info]
