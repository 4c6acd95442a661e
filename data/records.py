"""The error, the result and the per-record checks that every data format in `data/formats_*.py` shares.

A record is one JSONL line, one QnA entry of a line, or one table row. Each check here either returns the clean
value or raises `BadRecord(where, reason)`, so that `load_examples(skip_bad=True)` can collect it and move on.
Not run directly; `python -m data.check PATH` exercises all of it, and `tests/test_data_loaders.py` tests it.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data.example import Example, ImageSource

BOX_HINT = "boxes are [x1, y1, x2, y2] in original-image pixels"
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


@dataclass
class LoadOptions:
    shown: str  # the path as the user gave it: the `file` in `file:line` and the `folder` in `folder:row N`
    image_root: str | None = None
    split: str | None = None  # the split the user asked for (None: default_split, when the data has splits)
    default_split: str = "train"
    verify_images: bool = False


def resolve_path(value: str, base: Path) -> str:
    """An image path from a record as an absolute path string: absolute stays, relative is under `base`."""
    return os.path.abspath(os.path.join(base, value))  # join keeps `value` when it is absolute


def image_size(src: ImageSource, *, where: str, verify: bool) -> tuple[int, int]:
    """(width, height) of an image file or encoded bytes. Reads only the header unless `verify`, which decodes
    every pixel (catches truncated files that a header read misses)."""
    name = "<image bytes>" if isinstance(src, bytes) else src
    if isinstance(src, str) and not os.path.isfile(src):
        raise BadRecord(where, f"image file not found: {src}")
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            if verify:
                img.load()
            return img.size
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
