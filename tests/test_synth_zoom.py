"""The `zoom` task does what it is for: the pattern is unreadable in the model's view of the whole image, plain in
the model's view of a crop of the box, and the box itself is easy to find at low resolution.

Run: `cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_synth_zoom.py`
"""

import numpy as np
import pytest

from data import synth_zoom
from data.synth import generate, model_view
from data.synth_zoom import GRID, PATTERNS, SIDES, cell_hue, cell_of, pattern

N = 60  # 15 of each pattern


@pytest.fixture(scope="module")
def samples():
    return generate("zoom", N, seed=0)


def _grey(image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def _interior_in_view(view: np.ndarray, interior, size, origin=(0, 0), inset: int = 1) -> np.ndarray:
    """The interior box (original pixels, relative to `origin`) mapped into `view`, shrunk by `inset` view pixels
    past the first whole pixel so that the border's blur stays out."""
    sx, sy = view.shape[1] / size[0], view.shape[0] / size[1]
    x1, y1, x2, y2 = (v - o for v, o in zip(interior, origin * 2))
    return view[int(np.ceil(y1 * sy)) + inset:int(y2 * sy) - inset, int(np.ceil(x1 * sx)) + inset:int(x2 * sx) - inset]


def _features(patch: np.ndarray, mean: float) -> list[float]:
    """Mean offset, std, horizontal and vertical gradient energy: what a simple classifier could use."""
    ex = np.mean(np.diff(patch, axis=1) ** 2) if patch.shape[1] > 1 else 0.0
    ey = np.mean(np.diff(patch, axis=0) ** 2) if patch.shape[0] > 1 else 0.0
    return [patch.mean() - mean, patch.std(), ex, ey]


def _nearest_class_mean_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier on standardised features."""
    z = (features - features.mean(0)) / (features.std(0) + 1e-9)
    hits = 0
    for i in range(len(z)):
        rest = np.arange(len(z)) != i
        means = np.stack([z[rest & (labels == k)].mean(0) for k in range(len(PATTERNS))])
        hits += int(np.argmin(((means - z[i]) ** 2).sum(1)) == labels[i])
    return hits / len(z)


def _crop_rule(patch: np.ndarray) -> str:
    """Reads the pattern from a crop: stripes by gradient direction, then dots (25% dark: skewed) vs checker."""
    _, _, ex, ey = _features(patch, 0.0)
    if np.log(ey / ex) > 2:
        return "horizontal"
    if np.log(ey / ex) < -2:
        return "vertical"
    d = patch - patch.mean()
    return "dots" if (d ** 3).mean() / patch.std() ** 3 < -0.5 else "checker"


def _crop_interior(sample, jitter=(0, 0, 0, 0), box=None) -> np.ndarray:
    box = [v + j * s for v, j, s in zip(box or sample.bbox, jitter, (-1, -1, 1, 1))]
    view = _grey(model_view(sample.image.crop(box)))
    return _interior_in_view(view, sample.info["interior"], (box[2] - box[0], box[3] - box[1]), tuple(box[:2]), 2)


def test_every_pattern_has_the_same_mean():
    # stripes/checker: half at mean - 64, half at mean + 64; dots: 0.25 * (130 - 96) + 0.75 * (130 + 32) = 130
    for name in PATTERNS:
        for phase in ((0, 0), (1, 3), (3, 2)):
            assert pattern(name, 8, 12, 130.0, phase).mean() == 130.0
    h = pattern("horizontal", 4, 4, 100.0, (0, 0))
    assert h[:, 0].tolist() == [36.0, 36.0, 164.0, 164.0] and (h == h[:, :1]).all()
    assert pattern("vertical", 4, 4, 100.0, (0, 1))[0].tolist() == [36.0, 164.0, 164.0, 36.0]
    assert pattern("dots", 4, 4, 100.0, (0, 0))[:2, :2].tolist() == [[4.0, 4.0], [4.0, 4.0]]


def test_layout(samples):
    for s in samples:
        width, height = s.image.size
        x1, y1, x2, y2 = s.bbox
        assert width == height and width in SIDES and 448 <= width <= 640
        assert 64 <= x2 - x1 <= 96 and 64 <= y2 - y1 <= 96 and s.info["border"] >= 6
        cell = width // GRID
        col, row = x1 // cell, y1 // cell  # the whole box, with its margin, inside one cell
        assert col * cell + 12 <= x1 and x2 <= (col + 1) * cell - 12, (s.bbox, width)
        assert row * cell + 12 <= y1 and y2 <= (row + 1) * cell - 12, (s.bbox, width)
        assert s.info["cell"] == cell_of(s.bbox, s.image.size) == [col * cell, row * cell, (col + 1) * cell,
                                                                    (row + 1) * cell]
        assert s.record("x.png")["target_box"] == s.info["cell"]  # the crop that answers, written for the RL metrics
        assert model_view(s.image).size == (112, 112), "one merged 28x28 token of the view per cell"
        ring = _grey(s.image)[y1:y2, x1:x2].copy()
        b = s.info["border"]
        ring[b:-b, b:-b] = 0
        assert ring.max() < 100, "the whole border is dark"


def test_clutter_never_looks_like_or_touches_the_box(monkeypatch):
    monkeypatch.setattr(synth_zoom, "_NOISE_STD", 0.0)  # same draws, no noise: background pixels are exact
    for i, s in enumerate(generate("zoom", 12, seed=0)):
        pixels = np.asarray(s.image).astype(int)
        x1, y1, x2, y2 = s.bbox
        ring = np.zeros(pixels.shape[:2], dtype=bool)
        ring[y1 - 12:y2 + 12, x1 - 12:x2 + 12] = True
        ring[y1:y2, x1:x2] = False
        background = pixels[ring][0]  # the box's cell: one flat colour, its base white plus the cell's hue
        assert (pixels[ring] == background).all(), f"sample {i}: clutter within 12 px of the box"
        col, row = (v * GRID // s.image.width for v in s.bbox[:2])
        assert np.abs(background - background.mean() - cell_hue(col, row)).max() <= 1.0
        outside = pixels.copy()
        outside[y1:y2, x1:x2] = 255
        assert outside.min() >= 120, f"sample {i}: something dark besides the box"


def test_pattern_is_unreadable_in_the_full_view(samples):
    labels = np.array([PATTERNS.index(s.answer) for s in samples])
    feats, stds = [], []
    for s in samples:
        patch = _interior_in_view(_grey(model_view(s.image)), s.info["interior"], s.image.size)
        assert patch.size >= 4
        feats.append(_features(patch, s.info["mean"]))
        stds.append(patch.std())
    stds = np.array(stds)
    class_std = [stds[labels == k].mean() for k in range(len(PATTERNS))]
    assert stds.max() < 2.5, "the interior is a flat grey (the pattern's own std is ~64)"
    assert max(class_std) - min(class_std) < 0.5
    assert abs(np.array(feats)[:, 0]).max() < 2.0, "same mean grey for every pattern"
    assert _nearest_class_mean_accuracy(np.array(feats), labels) <= 0.45  # chance is 0.25


def test_pattern_is_plain_in_a_crop(samples):
    labels = np.array([PATTERNS.index(s.answer) for s in samples])
    jitter = np.random.default_rng(1).integers(0, 9, size=(len(samples), 4))  # an imprecise crop: up to 8 px more
    feats = []
    for s, j in zip(samples, jitter):
        exact, loose, cell = _crop_interior(s), _crop_interior(s, tuple(j)), _crop_interior(s, box=s.info["cell"])
        assert exact.std() > 40 and loose.std() > 40 and cell.std() > 35  # a cell is resized by up to 1.43x
        assert _crop_rule(exact) == s.answer and _crop_rule(loose) == s.answer and _crop_rule(cell) == s.answer
        feats.append(_features(exact, s.info["mean"]))
    assert _nearest_class_mean_accuracy(np.array(feats), labels) >= 0.95


def test_box_is_easy_to_find_at_low_resolution(samples):
    for s in samples:
        view = np.asarray(model_view(s.image)).min(axis=-1)
        ys, xs = np.nonzero(view < 100)  # the darkest pixels: only the border stays that dark
        sx, sy = view.shape[1] / s.image.width, view.shape[0] / s.image.height
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        truth = np.array(s.bbox) * [sx, sy, sx, sy]
        assert np.abs(found - truth).max() <= 1.5, (found, truth)
        inter = np.prod(np.clip(np.minimum(found[2:], truth[2:]) - np.maximum(found[:2], truth[:2]), 0, None))
        union = np.prod(found[2:] - found[:2]) + np.prod(truth[2:] - truth[:2]) - inter
        assert inter / union > 0.7


def test_cell_of_by_hand():
    # 624 px image, 156 px cells: centre (209, 46) is in column 1, row 0; centre (600, 600) in the last cell
    assert cell_of([168, 9, 250, 83], (624, 624)) == [156, 0, 312, 156]
    assert cell_of([580, 580, 620, 620], (624, 624)) == [468, 468, 624, 624]
    assert cell_of([0, 0, 10, 10], (448, 448)) == [0, 0, 112, 112]


def test_the_box_tokens_hue_tells_its_cell(samples):
    """In the model's view the merged 28x28 token holding the box has, as its colour's hue, the hue of its own cell
    (nearest of the 16), however much of it the dark box covers, and so has the whole view, whose other cells are
    neutral: the cue a tiny model can locate the box by."""
    hues = np.stack([cell_hue(c, r) for r in range(GRID) for c in range(GRID)])
    for s in samples:
        view = np.asarray(model_view(s.image), dtype=np.float64)
        col, row = (v * GRID // s.image.width for v in s.bbox[:2])
        token = view[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28].reshape(-1, 3).mean(0)
        chroma = token - token.mean()
        cosine = hues @ chroma / (np.linalg.norm(hues, axis=1) * np.linalg.norm(chroma))
        assert int(np.argmax(cosine)) == row * GRID + col and cosine.max() > 0.97, (s.bbox, cosine.max())
        whole = view.reshape(-1, 3).mean(0)
        assert int(np.argmax(hues @ (whole - whole.mean()))) == row * GRID + col
        others = np.delete(view.reshape(GRID, 28, GRID, 28, 3).mean((1, 3)).reshape(-1, 3), row * GRID + col, 0)
        assert np.abs(others - others.mean(1, keepdims=True)).max() < 2.0, "the other cells carry no hue"


# ---- zoom2: the same task on a 2x2 grid of 224 px images, period-2 patterns (synth_zoom.ZOOM2) ----

@pytest.fixture(scope="module")
def samples2():
    return generate("zoom2", N, seed=0)


def test_zoom2_layout(samples2):
    cells = set()
    for s in samples2:
        x1, y1, x2, y2 = s.bbox
        assert s.image.size == (224, 224) and model_view(s.image).size == (112, 112)  # an exact 2x downscale
        assert 64 <= x2 - x1 <= 88 and 64 <= y2 - y1 <= 88
        col, row = x1 // 112, y1 // 112
        assert col * 112 + 12 <= x1 and x2 <= (col + 1) * 112 - 12 and row * 112 + 12 <= y1 and y2 <= (row + 1) * 112 - 12
        assert s.info["cell"] == cell_of(s.bbox, s.image.size, 2) == [col * 112, row * 112, col * 112 + 112,
                                                                       row * 112 + 112]
        assert s.record("x.png")["target_box"] == s.info["cell"]
        inner = s.info["interior"]
        assert (inner[2] - inner[0]) % 2 == 0 and (inner[3] - inner[1]) % 2 == 0
        cells.add((col, row))
    assert len(cells) == 4


def test_zoom2_pattern_is_unreadable_whole_and_plain_in_its_quadrant(samples2):
    labels = np.array([PATTERNS.index(s.answer) for s in samples2])
    whole, crop = [], []
    for s in samples2:
        patch = _interior_in_view(_grey(model_view(s.image)), s.info["interior"], s.image.size)
        assert patch.std() < 5.0, "2x2 blocks of a period-2 pattern average to one grey (noise left)"
        whole.append(_features(patch, s.info["mean"]))
        cell = _crop_interior(s, box=s.info["cell"])  # 112 px: shown as it is
        assert cell.std() > 45 and _crop_rule(cell) == s.answer
        crop.append(_features(cell, s.info["mean"]))
    assert _nearest_class_mean_accuracy(np.array(whole), labels) <= 0.45  # chance 0.25
    assert _nearest_class_mean_accuracy(np.array(crop), labels) >= 0.95


def test_zoom2_quadrant_hue_names_the_quadrant(samples2):
    """The whole view's hue is the box's quadrant's (nearest of the 4, 90 degrees apart), as in zoom."""
    hues = np.stack([cell_hue(c, r, 2) for r in range(2) for c in range(2)])
    for s in samples2:
        view = np.asarray(model_view(s.image), dtype=np.float64)
        col, row = s.bbox[0] // 112, s.bbox[1] // 112
        whole = view.reshape(-1, 3).mean(0)
        assert int(np.argmax(hues @ (whole - whole.mean()))) == row * 2 + col


def test_zoom2_hue_reads_column_and_row_linearly():
    """zoom2's quadrant hues: the column is the sign of the red offset, the row the sign of green minus blue, so a
    linear read of the mean colour gives each (in row-major hue order the column needed |red|: it was learned last)."""
    for row in range(2):
        for col in range(2):
            r, g, b = cell_hue(col, row, 2)
            assert abs(r + g + b) < 1e-9 and np.isclose(np.linalg.norm([r, g, b]), 48 * np.sqrt(1.5))
            assert (r > 0) == (col == 0) and abs(r) > 30
            assert (g - b > 0) == (row == 0) and abs(g - b) > 50
