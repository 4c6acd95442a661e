"""The `zoom` task: the one where cropping must pay off.

A square 448-640 px cluttered image holds exactly one bold box (dark border 8-10 px, outer side 64-96 px), lying
wholly inside one cell of a 4x4 grid over the image (cells of 112-160 px; the box keeps >= 12 px from the cell's
edges). Its interior is filled with a pattern of period 4 px - horizontal stripes, vertical stripes, a checkerboard,
or dots - and every pattern has the SAME mean grey. Smart-resizing the whole image to <= 112*112 pixels is a
4-5.7x bicubic downscale, whose antialiasing kernel spans >= 16 px: each interior becomes the same flat grey (the
kernel's stopband leaks <= ~0.5 grey level of the pattern, under the per-pixel noise). A crop of the box's grid cell
is resized by 1-1.43x at most, and its 2 px stripes, cells and dots stay plain (a crop of the box itself too).
Period 2 would hide the pattern even better in the full view, but a 0.8x resize of a crop already turns it into
faint moire; period 4 survives that. The dark border survives downscaling, so the box is easy to find in the
low-resolution view.

Why a grid: a square image is seen by the tiny Qwen2.5-VL as 112x112 pixels = 4x4 merged visual tokens, one per
cell (`cell_of` gives the cell). Cropping the cell is choosing which of 16 tokens holds the dark box, a
classification a randomly initialised tiny model learns; regressing the box's own pixel coordinates is not (measured:
SFT on exact boxes collapsed to one constant box). data/zoom_sft.py writes crops of cells by default.
Why the box's cell is tinted: the tiny Qwen2.5-VL has no absolute position in its visual tokens (2-D rotary only) and
no pretraining, so "which of 16 tokens is dark" does not become coordinates it writes (measured: SFT on cell crops
picked the right cell for 2-7% of held-out images, chance 6%, even with every cell tinted its own hue, which needs
finding the dark token and then reading its colour). So the light background of the box's own cell carries a hue
(`cell_hue`: 16 hues 22.5 degrees apart at equal lightness, one per cell) and the other cells stay neutral: the
image's overall colour says which cell to crop, a mapping the tiny model learns like the `colors` task. The hue
says nothing about the pattern, so the task still needs the crop. A pretrained VLM does not need this cue.
Clutter (thin 1 px lines, small faint shapes) is light (every channel >= 120) and never comes within `_CLEAR` px of
the box; noise (std 8) covers everything. `tests/test_synth_zoom.py` measures all of this.

Each record also carries "target_box": the box's cell, the crop that answers (read as the example's metadata; the
RL diagnostics and the optional crop_target reward, rewards/tool_target.py, compare crops with it).

Generate: `python -m data.synth zoom --n 60 --out runs/synth/zoom`.

`zoom2` is the same task on a 2x2 grid (`ZOOM2`): 224 px images whose four 112 px quadrants each cover 2x2 of the
4x4 visual tokens, patterns of period 2 px. Smart-resizing the whole image to 112x112 is an exact 2x downscale,
which averages every 2x2 block of a period-2 pattern to the same flat grey; a crop of a quadrant is 112 px, shown
as it is, so the 1 px stripes, cells and dots stay plain. Where to look is then a choice among 4 quadrants by
4 hues 90 degrees apart, placed so that the column and the row are each a linear read of the mean colour
(`cell_hue`): the tiny model learns it from exact targets in ~150 SFT steps, and from the reward alone once SFT
has started it (the 16-cell one it learns slowly even from exact targets: docs/BENCHMARKS.md). Generate: `python -m data.synth zoom2 --n 60 --out runs/synth/zoom2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from data.synth_base import Sample, boxes_overlap, smart_resize

PATTERNS = ("horizontal", "vertical", "checker", "dots")
QUESTION = "What pattern is inside the bold box?"
PERIOD = 4  # px; stripes and checker cells are PERIOD // 2 wide, dots are PERIOD // 2 square on a PERIOD grid
_CONTRAST = 64  # stripes/checker: mean +- 64; dots: mean - 96 on 25% of pixels, mean + 32 on the rest
_CLEAR = 12  # px of untouched background around the box
_NOISE_STD = 8.0  # grey levels of per-pixel noise; it also buries the sub-grey-level residue of the pattern
GRID = 4  # cells per side: the tiny model's 4x4 merged visual tokens of a square image
_CELL_MARGIN = _CLEAR  # px between the box and its cell's edges (so also >= _CLEAR from the image's)
# image sides 448..640 in steps of 16 (cells a multiple of 4 px) that smart-resize to exactly 112x112 (576 does not:
# floating point makes it 84x84)
_HUE_CHROMA = 48.0  # grey levels: each cell's background is its base white + this much chroma in its own hue
SIDES = tuple(s for s in range(448, 641, 16) if smart_resize(s, s) == (112, 112))


@dataclass(frozen=True)
class Layout:
    grid: int  # cells per side
    period: int  # px of the interior pattern
    sides: tuple[int, ...]  # image sides to draw from


ZOOM = Layout(GRID, PERIOD, SIDES)
ZOOM2 = Layout(2, 2, (224,))


def pattern(name: str, height: int, width: int, mean: float, phase: tuple[int, int],
            period: int = PERIOD) -> np.ndarray:
    """A HxW float grey pattern whose mean is exactly `mean` when both sides are multiples of `period`."""
    assert height % period == 0 and width % period == 0, (height, width)
    half = period // 2
    yy, xx = np.mgrid[0:height, 0:width]
    row_band = ((yy + phase[0]) // half) % 2
    col_band = ((xx + phase[1]) // half) % 2
    if name == "horizontal":
        return mean + _CONTRAST * (2.0 * row_band - 1)
    if name == "vertical":
        return mean + _CONTRAST * (2.0 * col_band - 1)
    if name == "checker":
        return mean + _CONTRAST * (2.0 * ((row_band + col_band) % 2) - 1)
    if name == "dots":
        # dots cover 1/4 of the pixels: 0.25 * (mean - 1.5c) + 0.75 * (mean + 0.5c) = mean
        dot = ((yy + phase[0]) % period < half) & ((xx + phase[1]) % period < half)
        return np.where(dot, mean - 1.5 * _CONTRAST, mean + 0.5 * _CONTRAST)
    raise ValueError(f"unknown pattern {name!r}; expected one of {PATTERNS}")


def cell_of(box, image_size, grid: int = GRID) -> list[int]:
    """The grid x grid cell (original pixels, exclusive ends) holding the centre of `box` in an image of
    image_size = (width, height); for a zoom sample it holds the whole box."""
    width, height = image_size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col, row = min(int(cx * grid // width), grid - 1), min(int(cy * grid // height), grid - 1)
    return [col * width // grid, row * height // grid, (col + 1) * width // grid, (row + 1) * height // grid]


def cell_hue(col: int, row: int, grid: int = GRID) -> np.ndarray:
    """The RGB offset (zero mean: a pure hue at equal lightness) added to cell (col, row)'s light background.

    16 cells: hues 22.5 degrees apart in row-major order. 4 cells (zoom2): 45, 135, 225, 315 degrees for the
    top-left, top-right, bottom-right, bottom-left quadrants, so that the column is the sign of the red offset and
    the row the sign of green minus blue: each a linear read of the mean colour. (In row-major order, 0/90/180/270,
    the column is not: red and cyan, opposite offsets, would share a column, and a tiny model learned the row from
    the hue long before the column: docs/BENCHMARKS.md.)"""
    if grid == 2:
        angle = np.pi / 4 + np.pi / 2 * (0, 1, 3, 2)[row * 2 + col]
    else:
        angle = 2 * np.pi * (row * grid + col) / grid ** 2
    return _HUE_CHROMA * np.cos(angle - np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))


def _hue_map(side: int, box, grid: int) -> np.ndarray:
    """side x side x 3 offsets: the grid cell holding `box` filled with its cell_hue, every other cell neutral."""
    out = np.zeros((side, side, 3), dtype=np.float32)
    x1, y1, x2, y2 = cell_of(box, (side, side), grid)
    out[y1:y2, x1:x2] = cell_hue(x1 * grid // side, y1 * grid // side, grid)
    return out


def _place_target(rng: np.random.Generator, side: int, layout: Layout) -> tuple[list[int], int]:
    """A box inside a random cell of the layout's grid over a side x side image, >= _CELL_MARGIN from its edges."""
    border = int(rng.integers(8, 11))
    cell, p = side // layout.grid, layout.period
    largest = min(96, cell - 2 * _CELL_MARGIN)
    inner_w, inner_h = (p * int(rng.integers(-(-(64 - 2 * border) // p), (largest - 2 * border) // p + 1))
                        for _ in range(2))
    outer_w, outer_h = inner_w + 2 * border, inner_h + 2 * border
    col, row = (int(v) for v in rng.integers(0, layout.grid, size=2))
    x1 = col * cell + int(rng.integers(_CELL_MARGIN, cell - outer_w - _CELL_MARGIN + 1))
    y1 = row * cell + int(rng.integers(_CELL_MARGIN, cell - outer_h - _CELL_MARGIN + 1))
    return [x1, y1, x1 + outer_w, y1 + outer_h], border


def _segment_clear_of(p, q, box, margin: int) -> bool:
    """Whether the segment p-q stays `margin` px away from box (checked at 1 px steps along the segment)."""
    steps = int(max(abs(q[0] - p[0]), abs(q[1] - p[1]))) + 1
    t = np.linspace(0.0, 1.0, steps + 1)
    xs, ys = p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])
    inside = ((xs > box[0] - margin - 1) & (xs < box[2] + margin) & (ys > box[1] - margin - 1) & (ys < box[3] + margin))
    return not inside.any()


def _draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size, target) -> None:
    """Thin lines and small faint shapes, all light enough to fade away in the model view, none near the target."""
    width, height = size
    placed = 0
    while placed < int(rng.integers(6, 13)):
        p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        q = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if _segment_clear_of(p, q, target, _CLEAR):
            draw.line([p, q], fill=tuple(int(v) for v in rng.integers(120, 210, size=3)), width=1)
            placed += 1
    placed = 0
    while placed < int(rng.integers(5, 11)):
        w, h = (int(v) for v in rng.integers(8, 41, size=2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if boxes_overlap([x, y, x + w, y + h], target, _CLEAR):
            continue
        fill = tuple(int(v) for v in rng.integers(185, 236, size=3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w - 1, y + h - 1], fill=fill)
        placed += 1


def make_zoom(rng: np.random.Generator, label: int | None, layout: Layout = ZOOM) -> Sample:
    assert label is not None, "zoom is a classification task: generate() passes a balanced label"
    name = PATTERNS[label]
    side = int(rng.choice(layout.sides))
    width = height = side
    box, border = _place_target(rng, side, layout)
    white = float(rng.integers(236, 256)) - _HUE_CHROMA  # a neutral white (no tint of its own), room for the hue
    base = np.full((height, width, 3), white, dtype=np.float32)
    canvas = Image.fromarray(np.clip(np.rint(base + _hue_map(side, box, layout.grid)), 0, 255).astype(np.uint8))
    _draw_clutter(rng, ImageDraw.Draw(canvas), (width, height), box)

    pixels = np.array(canvas)
    dark = rng.integers(15, 46)
    pixels[box[1]:box[3], box[0]:box[2]] = dark  # the border: the whole box dark, the interior painted over next
    inner = [box[0] + border, box[1] + border, box[2] - border, box[3] - border]
    mean = float(rng.integers(125, 146))
    phase = (int(rng.integers(0, layout.period)), int(rng.integers(0, layout.period)))
    grey = pattern(name, inner[3] - inner[1], inner[2] - inner[0], mean, phase, layout.period)
    pixels[inner[1]:inner[3], inner[0]:inner[2]] = np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    noise = rng.normal(0.0, _NOISE_STD, size=(height, width, 1))  # over everything, the box included
    pixels = np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)

    cell = cell_of(box, (width, height), layout.grid)
    return Sample(image=Image.fromarray(pixels), question=QUESTION, answer=name, bbox=box, choices=list(PATTERNS),
                  info={"border": border, "interior": inner, "mean": mean, "cell": cell}, target_box=cell)


make_zoom2 = partial(make_zoom, layout=ZOOM2)
