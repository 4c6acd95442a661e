"""The small synthetic tasks of `data/synth.py`: `colors`, `grounding`, `geometry` (`zoom` is in synth_zoom.py).

Each generator is `make_<task>(rng, label) -> Sample`, drawn with PIL only (no system fonts, no antialiasing), so a
seed gives the same pixels everywhere. Boxes are [x1, y1, x2, y2] with exclusive ends (see synth_base.py).
Generate: `python -m data.synth colors --n 60 --out runs/synth/colors`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from data.synth_base import Sample, draw_text, light_background, text_size

COLORS = {  # canonical RGB: the drawn pixels are exactly these
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle")


def make_colors(rng: np.random.Generator, label: int | None) -> Sample:
    """One solid square of the labelled colour on a near-white, slightly noisy background."""
    assert label is not None, "colors is a classification task: generate() passes a balanced label"
    name = COLOR_NAMES[label]
    width, height = (int(v) for v in rng.integers(80, 257, size=2))
    side = int(rng.integers(12, 73))
    x1, y1 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    canvas = Image.fromarray(light_background(rng, width, height, noise_std=2.0))
    ImageDraw.Draw(canvas).rectangle([x1, y1, x1 + side - 1, y1 + side - 1], fill=COLORS[name])
    return Sample(image=canvas, question="What color is the square?", answer=name,
                  bbox=[x1, y1, x1 + side, y1 + side], choices=list(COLOR_NAMES))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill) -> None:
    """Fill `shape` so that its pixels span exactly `box` (exclusive ends)."""
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1
    if shape == "square":
        draw.rectangle([x1, y1, x2, y2], fill=fill)
    elif shape == "circle":
        draw.ellipse([x1, y1, x2, y2], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x1, y2), (x2, y2), ((x1 + x2) // 2, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def make_grounding(rng: np.random.Generator, label: int | None) -> Sample:
    """3-5 shapes, each in its own cell of a 3x2 grid (so they never touch); ask for one of them."""
    width, height = (int(v) for v in rng.integers(160, 321, size=2))
    cols, rows = (3, 2) if width >= height else (2, 3)
    cell_w, cell_h = width // cols, height // rows
    num = int(rng.integers(3, 6))
    cells = rng.choice(cols * rows, size=num, replace=False)
    combos = rng.choice(len(COLOR_NAMES) * len(SHAPES), size=num, replace=False)  # distinct colour+shape
    canvas = Image.fromarray(light_background(rng, width, height, noise_std=2.0))
    draw = ImageDraw.Draw(canvas)
    objects = []
    for cell, combo in zip(cells, combos):
        colour, shape = COLOR_NAMES[combo // len(SHAPES)], SHAPES[combo % len(SHAPES)]
        side = int(rng.integers(18, min(60, cell_w - 4, cell_h - 4) + 1))  # 2 px gap to the cell's edges
        x1 = (cell % cols) * cell_w + int(rng.integers(2, cell_w - side - 1))
        y1 = (cell // cols) * cell_h + int(rng.integers(2, cell_h - side - 1))
        box = [x1, y1, x1 + side, y1 + side]
        draw_shape(draw, shape, box, COLORS[colour])
        objects.append({"colour": colour, "shape": shape, "bbox": box})
    target = objects[int(rng.integers(num))]
    x1, y1, x2, y2 = target["bbox"]
    return Sample(image=canvas, question=f"Where is the {target['colour']} {target['shape']}?",
                  answer=f"[{x1}, {y1}, {x2}, {y2}]", bbox=list(target["bbox"]), info={"objects": objects})


def angle_at(p, q, r) -> float:
    """The angle at vertex p of triangle p-q-r, in degrees."""
    u, v = np.subtract(q, p), np.subtract(r, p)
    return math.degrees(math.acos(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))))


def _triangle_vertices(rng: np.random.Generator, angles, size, margin: int) -> list[tuple[int, int]]:
    """Integer vertices whose angles are within 0.5 deg of `angles`: A=(0,0), B=(1,0), C by the law of sines,
    then a random rotation and mirror, scaled to fill the image less `margin`."""
    a, b, c = (math.radians(v) for v in angles)
    ac = math.sin(b) / math.sin(c)
    base = np.array([[0.0, 0.0], [1.0, 0.0], [ac * math.cos(a), ac * math.sin(a)]])
    while True:  # a handful of tries at most: only rounding to whole pixels can break the 0.5 deg bound
        theta = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = base @ rot.T * (1 if rng.random() < 0.5 else np.array([-1.0, 1.0]))
        pts -= pts.min(axis=0)
        scale = min((size[0] - 2 * margin) / pts[:, 0].max(), (size[1] - 2 * margin) / pts[:, 1].max())
        offset = (np.array(size) - pts.max(axis=0) * scale) / 2
        verts = [tuple(int(v) for v in np.rint(p * scale + offset)) for p in pts]
        measured = [angle_at(verts[i], verts[(i + 1) % 3], verts[(i + 2) % 3]) for i in range(3)]
        if max(abs(m - t) for m, t in zip(measured, angles)) < 0.5:
            return verts


def _label_position(verts, i: int, text: str, size) -> tuple[int, int]:
    """Top-left corner for the label of vertex i: just outside the triangle, on the external bisector."""
    p = np.array(verts[i], dtype=float)
    e1, e2 = (np.array(verts[j], dtype=float) - p for j in ((i + 1) % 3, (i + 2) % 3))
    out = -(e1 / np.linalg.norm(e1) + e2 / np.linalg.norm(e2))
    out /= np.linalg.norm(out)
    w, h = text_size(text, 2)
    cx, cy = p + out * (0.5 * math.hypot(w, h) + 6)
    return int(np.clip(cx - w / 2, 0, size[0] - w)), int(np.clip(cy - h / 2, 0, size[1] - h))


def make_geometry(rng: np.random.Generator, label: int | None) -> Sample:
    """A triangle with two angles labelled in degrees and the third marked '?'; answer 180 - a - b."""
    while True:
        a, b = (int(v) for v in rng.integers(20, 121, size=2))
        if 180 - a - b >= 20:
            break
    angles = (a, b, 180 - a - b)
    size = tuple(int(v) for v in rng.integers(256, 321, size=2))
    verts = _triangle_vertices(rng, angles, size, margin=48)
    canvas = Image.fromarray(light_background(rng, size[0], size[1], noise_std=2.0))
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    ImageDraw.Draw(canvas).polygon(verts, outline=ink, width=2)
    for i, text in enumerate((f"{a}\N{DEGREE SIGN}", f"{b}\N{DEGREE SIGN}", "?")):
        draw_text(canvas, _label_position(verts, i, text, size), text, fill=ink, scale=2)
    return Sample(image=canvas, question="What is the measure of the angle marked ? in degrees?",
                  answer=str(angles[2]), info={"vertices": verts, "angles": angles})
