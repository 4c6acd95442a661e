"""The error, the result and the per-record checks that every data format in `data/formats_*.py` shares.

A record is one JSONL line, one QnA entry of a line, or one table row. Each check here either returns the clean
value or raises `BadRecord(where, reason)`, so that `load_examples(skip_bad=True)` can collect it and move on.
Not run directly; `python -m data.check PATH` exercises all of it, and `tests/test_data_loaders.py` tests it.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from data.example import Example, ImageSource, displayed, displayed_size, orientation

BOX_HINT = "boxes are [x1, y1, x2, y2] in original-image pixels, as the image is displayed"
MISSING = object()  # a field absent from its record (as opposed to present with the value None)


class BadRecord(ValueError):
    """One record that cannot become an Example. The message is `"{where}: {reason}"`, where `where` is
    `file:line` (1-based) for line-based files or `folder:row N` (0-based, as in the table) for tables."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self):  # the default reduce would call BadRecord(message) and fail on unpickling
        return (BadRecord, (self.where, self.reason))


@dataclass
class LoadResult:
    format: str  # the detected format name, a key of data.loaders.FORMATS
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # BadRecord messages of the records left out (skip_bad)
    notes: list[str] = field(default_factory=list)  # `where: what was changed` per record (images downsized)


@dataclass
class LoadOptions:
    shown: str  # the path as the user gave it: the `file` in `file:line` and the `folder` in `folder:row N`
    image_root: str | None = None
    split: str | None = None  # the split the user asked for (None: default_split, when the data has splits)
    default_split: str = "train"
    verify_images: bool = False  # decode every pixel (finish_example), not just the header
    max_image_pixels: int = 0  # width x height above which an image is downsized or refused (0: no cap)
    oversized: str = "downsize"  # what happens above the cap: downsize (boxes scaled with it) or refuse
    # fn(example, displayed sizes of its images) -> why the model cannot take it, or None (models/admit.py builds
    # one from the model's processor); a reason makes the record bad, like any other check here
    model_check: Callable[[Example, list[tuple[int, int]]], str | None] | None = None


def resolve_path(value: str, base: Path) -> str:
    """An image path from a record as an absolute path string: absolute stays, relative is under `base`."""
    return os.path.abspath(os.path.join(base, value))  # join keeps `value` when it is absolute


def image_size(src: ImageSource, *, where: str, verify: bool) -> tuple[int, int]:
    """(width, height) of an image file or encoded bytes as displayed (EXIF orientation applied: the frame boxes
    are in). Reads only the header unless `verify`, which decodes every pixel (catches truncated files that a
    header read misses)."""
    name = "<image bytes>" if isinstance(src, bytes) else src
    if isinstance(src, str) and not os.path.isfile(src):
        raise BadRecord(where, f"image file not found: {src}")
    try:
        with warnings.catch_warnings():  # PIL warns above 89 M pixels; finish_example's pixel cap deals with it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                if verify:
                    img.load()
                return displayed_size(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL raises all of these
        raise BadRecord(where, f"cannot read image {name}: {exc}") from None


def show_box(box) -> str:
    """A box as the user wrote it: ints stay ints, so `[10, 5, 300, 40]` reads back as written."""
    if not isinstance(box, (list, tuple)):
        return repr(box)
    return "[" + ", ".join(str(v) if isinstance(v, (int, float)) else repr(v) for v in box) + "]"


def check_box(box, size: tuple[int, int], *, where: str, shown: str | None = None) -> list[float]:
    """A box validated against its image's (width, height): 4 finite numbers, x1 < x2, y1 < y2, all inside."""
    shown = shown or show_box(box)
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(is_num(v) for v in box):
        raise BadRecord(where, f"box {shown} is not 4 numbers; {BOX_HINT}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise BadRecord(where, f"box {shown} has a non-finite number; {BOX_HINT}")
    if x1 >= x2 or y1 >= y2:
        axis = "x1 >= x2" if x1 >= x2 else "y1 >= y2"
        raise BadRecord(where, f"box {shown} has {axis}; {BOX_HINT}")
    width, height = size
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise BadRecord(where, f"box {shown} lies outside the {width}x{height} image; {BOX_HINT}")
    return [x1, y1, x2, y2]


def check_boxes(value, size: tuple[int, int], *, where: str) -> list[list[float]]:
    """One box `[x1, y1, x2, y2]` or a list of them (None or [] for none), each checked by `check_box`."""
    if value is None or value is MISSING or value == []:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(b, (list, tuple)) for b in value):
        return [check_box(b, size, where=where) for b in value]
    return [check_box(value, size, where=where)]


def need_str(value, name: str, *, where: str) -> str:
    if value is MISSING:
        raise BadRecord(where, f'missing field "{name}"')
    if not isinstance(value, str):
        raise BadRecord(where, f'"{name}" must be a string, got {type(value).__name__} {value!r:.60}')
    return value


def str_list(value, name: str, *, where: str) -> list[str]:
    """An optional list of strings (absent or None -> [])."""
    if value is MISSING or value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadRecord(where, f'"{name}" must be a list of strings, got {value!r:.80}')
    return list(value)


def answer_list(value, *, where: str) -> list[str]:
    """`answer` as a list of references: a string, or a non-empty list of strings ([0] is canonical)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if value is MISSING:
        raise BadRecord(where, 'missing field "answer"')
    raise BadRecord(where, f'"answer" must be a string or a non-empty list of strings, got {value!r:.80}')


# ---------------------------------------------------------------------------------------------- every format
OVERSIZED = ("downsize", "refuse")
TOOL_CALL_BOX_RE = re.compile(r"(<tool_call>\s*\[)([^\]]*)(\]\s*</tool_call>)")


@dataclass
class CheckedImage:
    src: ImageSource  # the source to train on: the original, or PNG bytes of the downsized image
    size: tuple[int, int]  # (width, height) of `src` as displayed (EXIF orientation applied)
    scale: tuple[float, float] | None = None  # (x, y) factors applied to the pixels, None when untouched
    note: str | None = None  # what was done to it, for the user


def finish_example(example: Example, opts: LoadOptions, seen: dict[str, CheckedImage]) -> tuple[Example, list[str]]:
    """The checks every format's Example goes through, whatever file it came from: a non-empty reference answer,
    every image decodable (`opts.verify_images`) and within `opts.max_image_pixels` (downsized, with its boxes
    and the SFT target's crop boxes scaled the same way, or refused), then what the model will take
    (`opts.model_check`). `seen` caches images shared by records.
    Returns the Example to train on and notes for the user; raises BadRecord naming the record."""
    where = example.origin
    if not example.answers or any(not a.strip() for a in example.answers):
        raise BadRecord(where, f"empty reference answer (answer = {example.answers!r}): rewards compare the response "
                               "with it; give the answer, or drop the record")
    checked = []
    for src in example.images:
        key = src if isinstance(src, str) else None
        if key is None or key not in seen:
            one = check_image(src, where=where, opts=opts)
            if key is not None:
                seen[key] = one
        checked.append(one if key is None else seen[key])
    if opts.model_check is not None and (reason := opts.model_check(example, [c.size for c in checked])):
        raise BadRecord(where, reason)
    notes = [f"{where}: {c.note}" for c in checked if c.note]
    if not notes:
        return example, []
    changes: dict = {"images": [c.src for c in checked]}
    scale = checked[0].scale if example.images else None
    if scale is not None:  # boxes and the target's crops are in pixels of images[0]
        changes["boxes"] = [scale_box(b, scale) for b in example.boxes]
        if example.target is not None:
            changes["target"] = TOOL_CALL_BOX_RE.sub(
                lambda m: m[1] + ", ".join(num(v, f) for v, f in zip(m[2].split(","), scale * 2)) + m[3],
                example.target)
    return replace(example, **changes), notes


def check_image(src: ImageSource, *, where: str, opts: LoadOptions) -> CheckedImage:
    """An image decoded in full when `opts.verify_images` (a truncated file fails here, at load, not at step N),
    and held to `opts.max_image_pixels`: above it, downsized to fit (PNG bytes) or refused, per `opts.oversized`."""
    name = "<image bytes>" if isinstance(src, bytes) else src
    if isinstance(src, str) and not os.path.isfile(src):
        raise BadRecord(where, f"image file not found: {src}")
    try:
        with warnings.catch_warnings():
            if opts.max_image_pixels:  # PIL warns above 89 M pixels; the cap says what happens instead
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return capped(src, name, where=where, opts=opts)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL raises all of these
        if isinstance(exc, BadRecord):
            raise
        raise BadRecord(where, f"cannot read image {name}: {exc}") from None


def capped(src: ImageSource, name: str, *, where: str, opts: LoadOptions) -> CheckedImage:
    cap = opts.max_image_pixels
    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
        width, height = displayed_size(img)
        turned = orientation(img)
        if not cap or width * height <= cap:
            if opts.verify_images:
                img.load()
            note = (f"image {name} has EXIF orientation {turned}: used as displayed ({width}x{height}), and its "
                    "boxes are read in that frame") if turned != 1 else None
            return CheckedImage(src, (width, height), note=note)
        said = f"image {name} is {width}x{height} = {width * height} pixels, over data.max_image_pixels = {cap}"
        if opts.oversized == "refuse":
            raise BadRecord(where, f"{said}: shrink it, raise the cap, or set data.oversized_images = downsize")
        factor = math.sqrt(cap / (width * height))
        size = (max(1, int(width * factor)), max(1, int(height * factor)))
        stored = size[::-1] if turned >= 5 else size  # draft() takes the stored frame
        img.draft("RGB", stored)  # JPEG: decode at a reduced scale directly (no-op for other formats)
        upright = displayed(img)
        rgb = upright if upright.mode == "RGB" else upright.convert("RGB")  # no second full-size copy when already RGB
        small = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)  # integer reduce first: faster
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return CheckedImage(buf.getvalue(), size, (size[0] / width, size[1] / height),
                        f"{said}: downsized to {size[0]}x{size[1]}, its boxes scaled with it")


def scale_box(box: list[float], scale: tuple[float, float]) -> list[float]:
    sx, sy = scale
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def num(text: str | float, factor: float) -> str:
    """A box coordinate scaled and written back short: 2 decimals at most, no trailing zeros."""
    return f"{float(text) * factor:.2f}".rstrip("0").rstrip(".")
