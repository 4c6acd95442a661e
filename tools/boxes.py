"""Box frames: convert `[x1, y1, x2, y2]` boxes between the coordinate frames models speak, and check them.

Frames (see docs/DESIGN.md, "Box frames"):
- "pixels":   pixels of the ORIGINAL image (what `Example.boxes` stores and what the crop tool takes);
- "resized":  pixels of the image after the processor's smart resize (Qwen2.5-VL); needs `resized_size`;
- "norm1000": 0..1000 relative to the width/height (Qwen2-VL, Qwen3-VL).

A coordinate maps between frames by the ratio of the frames' sizes: x_dst = x * W_dst / W_src.

    from tools.boxes import convert_box, validate_box
    convert_box([0, 0, 500, 1000], src="norm1000", dst="pixels", image_size=(640, 480))  # [0, 0, 320, 480]

Run the tests: `python -m pytest -q tests/test_tools_boxes.py`.
"""

from __future__ import annotations

import math

Size = tuple[float, float]  # (width, height)

# How far (in pixels) a box may overshoot the image edge and still be clamped instead of rejected:
# models trained on resized or 0..1000 frames land a fraction of a pixel outside after conversion.
EDGE_TOLERANCE = 1.0


def _pixels_size(image_size: Size, resized_size: Size | None) -> Size:
    return image_size


def _norm1000_size(image_size: Size, resized_size: Size | None) -> Size:
    return (1000.0, 1000.0)


def _resized_size(image_size: Size, resized_size: Size | None) -> Size:
    if resized_size is None:
        raise ValueError("box frame 'resized' needs resized_size=(width, height) of the processor's resized image")
    return resized_size


# frame name -> fn(image_size, resized_size) -> the frame's (width, height)
FRAME_SIZES = {"pixels": _pixels_size, "resized": _resized_size, "norm1000": _norm1000_size}


def frame_size(frame: str, *, image_size: Size, resized_size: Size | None = None) -> Size:
    """The (width, height) that the frame's coordinates run over, e.g. (1000, 1000) for "norm1000"."""
    if frame not in FRAME_SIZES:
        raise ValueError(f"unknown box frame {frame!r}; frames: {', '.join(FRAME_SIZES)}")
    width, height = FRAME_SIZES[frame](image_size, resized_size)
    if not all(finite_number(side) is not None and side > 0 for side in (width, height)):
        raise ValueError(f"frame {frame!r} has size {width}x{height}; width and height must be positive numbers")
    return float(width), float(height)


def convert_box(box, *, src: str, dst: str, image_size: Size, resized_size: Size | None = None) -> list[float]:
    """Convert a box from frame `src` to frame `dst`. Raises ValueError for an unknown frame or a malformed box."""
    src_w, src_h = frame_size(src, image_size=image_size, resized_size=resized_size)
    dst_w, dst_h = frame_size(dst, image_size=image_size, resized_size=resized_size)
    numbers = box_numbers(box)
    if numbers is None:
        raise ValueError(f"box must be 4 finite numbers [x1, y1, x2, y2], got {show(box)}")
    x1, y1, x2, y2 = numbers
    # multiply before dividing: keeps round trips exact whenever the true values are representable
    return [x1 * dst_w / src_w, y1 * dst_h / src_h, x2 * dst_w / src_w, y2 * dst_h / src_h]


def args_to_pixels(name: str, args, *, frame: str, image_size: Size, resized_size: Size | None = None) -> dict | str:
    """Tool `name`'s arguments with "box" and "center" moved from `frame` to original-image pixels, or an error
    string (in the model's own frame) for a box outside the image. Malformed values pass through: the tool names them.
    """
    src_w, src_h = frame_size(frame, image_size=image_size, resized_size=resized_size)
    if frame == "pixels" or not isinstance(args, dict):
        return args
    width, height = image_size
    converted = dict(args)
    box = box_numbers(args.get("box"))
    if box is not None:
        problem = validate_box(box, (src_w, src_h))
        if problem:
            return f"{name}: {problem}"
        converted["box"] = convert_box(box, src=frame, dst="pixels", image_size=image_size, resized_size=resized_size)
    center = args.get("center")
    if isinstance(center, (list, tuple)) and len(center) == 2 and None not in [finite_number(v) for v in center]:
        converted["center"] = [center[0] * width / src_w, center[1] * height / src_h]
    return converted


def validate_box(box, image_size: Size, *, tolerance: float = EDGE_TOLERANCE) -> str | None:
    """Why `box` (original-image pixels) cannot be cropped from an image of `image_size`, or None if it can.

    Rule: 4 finite numbers, x1 < x2 and y1 < y2, and every coordinate within `tolerance` pixels of the image;
    such a box is then cut to the image by `clamp_box` and must still have an area.
    """
    numbers = box_numbers(box)
    if numbers is None:
        return f"box must be 4 numbers [x1, y1, x2, y2], got {show(box)}"
    x1, y1, x2, y2 = numbers
    width, height = image_size
    if not (x1 < x2 and y1 < y2):
        return f"box {show(numbers)} needs x1 < x2 and y1 < y2"
    inside_x = -tolerance <= x1 and x2 <= width + tolerance
    inside_y = -tolerance <= y1 and y2 <= height + tolerance
    if not (inside_x and inside_y):
        return f"box {show(numbers)} is outside the {show(width)}x{show(height)} image"
    cx1, cy1, cx2, cy2 = clamp_box(numbers, image_size)
    if not (cx1 < cx2 and cy1 < cy2):
        return f"box {show(numbers)} has no area inside the {show(width)}x{show(height)} image"
    return None


def clamp_box(box, image_size: Size) -> list[float]:
    """Cut a box of 4 finite numbers to the image rectangle [0, width] x [0, height]."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def box_numbers(box) -> list[float] | None:
    """The box as 4 floats, or None unless it is a list/tuple of exactly 4 finite numbers."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    numbers = [finite_number(v) for v in box]
    return None if any(v is None for v in numbers) else numbers


def finite_number(value) -> float | None:
    """`value` as a float if it is an int/float (not a bool) that fits a finite float; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int with hundreds of digits
        return None
    return number if math.isfinite(number) else None


def show(value, limit: int = 60) -> str:
    """A short, model-readable rendering of a value for error messages: 900.0 -> 900, 'a' -> "a"."""
    if isinstance(value, float) and math.isfinite(value) and (value == 0 or 0.01 <= abs(value) < 1e9):
        text = f"{value:.2f}".rstrip("0").rstrip(".")  # coordinates: 900.0 -> 900, 141.4321 -> 141.43
    elif isinstance(value, float):
        text = f"{value:g}"  # 1e+300, 1e-05, nan, inf
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, str):
        text = '"' + value + '"'
    elif value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
