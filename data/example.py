"""The one record every data format is read into, and every task, reward and rollout consumes.

Boxes are always stored in ORIGINAL-image pixels of `images[0]`, `[x1, y1, x2, y2]` with x1 < x2, y1 < y2.
Converting to a model family's frame (0-1000, resized pixels, ...) happens at the model boundary, never here.
Images are used as a person sees them: a photo's EXIF orientation (a phone's "rotate 90°" tag) is applied when it is
opened (`displayed`), so pixels, sizes and boxes all live in the displayed frame, never in the stored one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps

ImageSource = Union[str, bytes]  # a file path, or the encoded bytes of an image (PNG/JPEG/...)


@dataclass
class Example:
    question: str
    answers: list[str]  # every reference answer; answers[0] is the canonical one
    images: list[ImageSource]  # usually one image
    boxes: list[list[float]] = field(default_factory=list)  # original-image pixels of images[0]
    choices: list[str] = field(default_factory=list)  # multiple-choice options, in order (A, B, C, ...)
    reference_steps: list[str] = field(default_factory=list)
    target: str | None = None  # SFT target: the assistant's text, may hold <tool_call>[x1, y1, x2, y2]</tool_call>
    metadata: dict = field(default_factory=dict)
    origin: str = ""  # where it came from, for error messages: "file.jsonl:12" or "folder:row 3"

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""

    def open_images(self) -> list[Image.Image]:
        """Decode every image as RGB. Raises ValueError naming `origin` when one cannot be read."""
        return [open_image(src, origin=self.origin) for src in self.images]


_NO_OPTIONS = "\x00"  # where {options} stood for an example without choices: removed with the space before it


def format_question(example: Example, template: str) -> str:
    """The user text of `example` from a question template (data.question_template): {question}; {choices}, the
    options as 'A. x, B. y' (empty when there are none); {options}, the sentence 'Options: A. x, B. y.', or nothing
    at all when the example has no options (together with one space before it), so a template may name it for
    data where only some rows have choices."""
    choices = ", ".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(example.choices))
    options = f"Options: {choices}." if choices else _NO_OPTIONS
    text = template.format(question=example.question, choices=choices, options=options)
    return text.replace(" " + _NO_OPTIONS, "").replace(_NO_OPTIONS, "")


EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 is upright, 5-8 swap width and height


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1..8; 1 when it has none or an unreadable one)."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: the pixels are what they are
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped for the orientations that turn the image a quarter (5-8)."""
    width, height = img.size
    return (height, width) if orientation(img) >= 5 else (width, height)


def displayed(img: Image.Image) -> Image.Image:
    """The image turned upright as its EXIF orientation says (the same object when there is nothing to do)."""
    return ImageOps.exif_transpose(img) if orientation(img) != 1 else img


def open_image(src: ImageSource, *, origin: str = "") -> Image.Image:
    """The image decoded in full, upright (EXIF orientation applied) and in RGB."""
    try:
        if isinstance(src, bytes):
            img = Image.open(io.BytesIO(src))
        else:
            img = Image.open(Path(src))
        img.load()
        img = displayed(img)
    except (OSError, ValueError) as exc:
        name = "<bytes>" if isinstance(src, bytes) else str(src)
        raise ValueError(f"{origin}: cannot open image {name}: {exc}") from exc
    return img.convert("RGB")
