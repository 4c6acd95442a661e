"""The pixels of `colors`, `grounding` and `geometry` say what their records say.

Run: `cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_synth_tasks.py`
"""

import math
import re

import numpy as np
import pytest
from PIL import Image

from data.synth import generate
from data.synth_base import draw_text, text_size
from data.synth_tasks import COLOR_NAMES, COLORS, SHAPES, _label_position, angle_at


def _mask(image, rgb) -> np.ndarray:
    return (np.asarray(image) == np.array(rgb, dtype=np.uint8)).all(-1)


def _tight_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_colors_square_has_the_named_colour():
    for s in generate("colors", 30, seed=0):
        width, height = s.image.size
        x1, y1, x2, y2 = s.bbox
        assert 80 <= width <= 256 and 80 <= height <= 256 and 12 <= x2 - x1 == y2 - y1 <= 72
        mask = _mask(s.image, COLORS[s.answer])
        assert mask[y1:y2, x1:x2].all(), "every pixel of the box is the named colour"
        assert _tight_box(mask) == s.bbox, "and no pixel outside it"
        for other in set(COLOR_NAMES) - {s.answer}:
            assert not _mask(s.image, COLORS[other]).any()
        outside = np.asarray(s.image).copy()
        outside[y1:y2, x1:x2] = 255
        assert outside.min() >= 236 - 10, "a near-white background (base >= 236, noise std 2)"


# fraction of its box a shape fills: square 1, circle pi/4 = 0.785, triangle 1/2 (+ its edge pixels)
FILL = {"square": (1.0, 1.0), "circle": (0.74, 0.83), "triangle": (0.48, 0.60)}


def test_grounding_box_is_the_asked_shape():
    for s in generate("grounding", 30, seed=0):
        colour, shape = re.fullmatch(r"Where is the (\w+) (\w+)\?", s.question).groups()
        objects = s.info["objects"]
        assert 3 <= len(objects) <= 5
        assert len({(o["colour"], o["shape"]) for o in objects}) == len(objects), "distinct colour+shape"
        assert sum(o["colour"] == colour and o["shape"] == shape for o in objects) == 1
        x1, y1, x2, y2 = s.bbox
        assert s.answer == f"[{x1}, {y1}, {x2}, {y2}]"
        width, height = s.image.size
        assert 160 <= width <= 320 and 160 <= height <= 320
        # the colour's pixels within 2 px of the box (other shapes keep >= 4 px away) span exactly the box
        near = np.zeros((height, width), dtype=bool)
        near[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
        mask = _mask(s.image, COLORS[colour]) & near
        assert _tight_box(mask) == s.bbox
        low, high = FILL[shape]
        assert low <= mask.sum() / ((x2 - x1) * (y2 - y1)) <= high, shape


def test_grounding_covers_every_colour_and_shape():
    asked = [re.fullmatch(r"Where is the (\w+) (\w+)\?", s.question).groups() for s in generate("grounding", 60, 3)]
    assert {c for c, _ in asked} == set(COLOR_NAMES) and {sh for _, sh in asked} == set(SHAPES)


def test_angle_at_hand_worked():
    assert angle_at((0, 0), (4, 0), (0, 3)) == pytest.approx(90.0)  # right angle at the origin
    assert angle_at((4, 0), (0, 3), (0, 0)) == pytest.approx(math.degrees(math.atan2(3, 4)))  # 36.87 deg


def test_geometry_drawn_triangle_has_the_labelled_angles():
    for s in generate("geometry", 30, seed=0):
        a, b, c = s.info["angles"]
        assert 20 <= a <= 120 and 20 <= b <= 120 and c >= 20 and a + b + c == 180
        assert s.answer == str(180 - a - b)
        verts = s.info["vertices"]
        measured = [angle_at(verts[i], verts[(i + 1) % 3], verts[(i + 2) % 3]) for i in range(3)]
        assert measured == pytest.approx([a, b, c], abs=1.0)
        assert sum(measured) == pytest.approx(180.0)
        # the drawn lines pass through those vertices: dark ink all along every edge
        dark = np.asarray(s.image).max(axis=-1) < 100
        for i in range(3):
            p, q = np.array(verts[i]), np.array(verts[(i + 1) % 3])
            for t in np.linspace(0, 1, 25):
                x, y = np.rint(p + t * (q - p)).astype(int)
                assert dark[y - 1:y + 2, x - 1:x + 2].any(), (s.info, t)


def test_geometry_labels_are_drawn_next_to_their_vertices():
    for s in generate("geometry", 10, seed=1):
        a, b, _ = s.info["angles"]
        verts = s.info["vertices"]
        dark = np.asarray(s.image).max(axis=-1) < 100
        for i, text in enumerate((f"{a}\N{DEGREE SIGN}", f"{b}\N{DEGREE SIGN}", "?")):
            x, y = _label_position(verts, i, text, s.image.size)
            glyphs = Image.new("RGB", s.image.size, (255, 255, 255))
            draw_text(glyphs, (x, y), text, fill=(0, 0, 0), scale=2)
            ink = np.asarray(glyphs).max(axis=-1) < 100
            assert ink.sum() >= 20 and dark[ink].all(), f"label {text!r} is in the image"
            w, h = text_size(text, 2)
            centre = np.array([x + w / 2, y + h / 2])
            dists = [np.linalg.norm(centre - np.array(v)) for v in verts]
            assert int(np.argmin(dists)) == i and dists[i] < 45, f"label {text!r} sits by its vertex"
