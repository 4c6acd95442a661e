"""Shared pieces of the synthetic tasks (`data/synth.py`): the Sample record, the model's view of an image, and
small deterministic drawing helpers.

`model_view(image)` is what a Qwen2.5-VL image processor feeds the vision tower: Qwen's "smart resize" (both sides
multiples of `factor`, pixel count within [min_pixels, max_pixels], aspect ratio kept) done with PIL bicubic, like
`transformers`' Qwen2-VL PIL image processor. Tests use it to check what the model can and cannot see.

Boxes are `[x1, y1, x2, y2]` ints in original-image pixels with EXCLUSIVE ends (PIL `crop` semantics): the drawn
object covers columns x1 .. x2-1 and rows y1 .. y2-1.
Run the tests: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_synth*.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_PIXELS = 112 * 112  # the demo's tiny VLM: 16 image tokens for a 112x112 image
MIN_PIXELS = 56 * 56
FACTOR = 28  # patch 14 x merge 2


@dataclass
class Sample:
    """One generated example: what goes into a JSONL line, plus `info` (generator facts for tests, not written)."""

    image: Image.Image
    question: str
    answer: str
    bbox: list[int] | None = None
    choices: list[str] | None = None
    info: dict = field(default_factory=dict)
    target_box: list[int] | None = None  # where a crop should look (written: readers keep it as metadata)

    def record(self, image_path: str) -> dict:
        rec = {"image": image_path, "question": self.question, "answer": self.answer}
        if self.bbox is not None:
            rec["bbox"] = [int(v) for v in self.bbox]
        if self.choices is not None:
            rec["choices"] = list(self.choices)
        if self.target_box is not None:
            rec["target_box"] = [int(v) for v in self.target_box]
        return rec


def smart_resize(height: int, width: int, *, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) after Qwen's smart resize; the same arithmetic as transformers' `smart_resize`."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def model_view(image: Image.Image, max_pixels: int = MAX_PIXELS, factor: int = FACTOR,
               min_pixels: int = MIN_PIXELS) -> Image.Image:
    """The image as the vision tower receives it: smart-resized with bicubic (antialiased) resampling."""
    h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    if (h, w) == (image.height, image.width):
        return image.copy()
    return image.resize((w, h), Image.Resampling.BICUBIC)


def balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> list[int]:
    """n class indices, each block of `num_classes` a fresh permutation: counts differ by at most one, and the
    first k labels do not depend on n."""
    blocks = [rng.permutation(num_classes) for _ in range(-(-n // num_classes))]
    return [int(c) for c in np.concatenate(blocks)[:n]]


def light_background(rng: np.random.Generator, width: int, height: int, noise_std: float = 0.0) -> np.ndarray:
    """A near-white HxWx3 uint8 canvas: a random base tint, optionally with per-pixel Gaussian noise."""
    base = rng.integers(236, 256, size=3)
    canvas = np.broadcast_to(base.astype(np.float32), (height, width, 3)).copy()
    if noise_std > 0:
        canvas += rng.normal(0.0, noise_std, size=(height, width, 1)).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def boxes_overlap(a, b, margin: int = 0) -> bool:
    """Whether boxes a and b (exclusive ends) come closer than `margin` pixels."""
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


_FONT = ImageFont.load_default_imagefont()  # PIL's built-in bitmap font: no system font, same pixels everywhere


def text_size(text: str, scale: int) -> tuple[int, int]:
    x1, y1, x2, y2 = _FONT.getbbox(text)
    return (x2 - x1) * scale, (y2 - y1) * scale


def draw_text(image: Image.Image, xy: tuple[int, int], text: str, fill, scale: int = 2) -> None:
    """Draw `text` with its top-left at xy, the bitmap font magnified `scale` times (nearest: crisp glyphs)."""
    w, h = text_size(text, 1)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((-_FONT.getbbox(text)[0], -_FONT.getbbox(text)[1]), text, fill=255, font=_FONT)
    mask = mask.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    image.paste(Image.new("RGB", mask.size, fill), xy, mask)
