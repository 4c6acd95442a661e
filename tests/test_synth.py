"""data/synth.py: determinism, the JSONL contract, errors, the CLI, and Qwen's smart resize.

Run: `cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_synth*.py`
"""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.synth import TASKS, generate, model_view, smart_resize, write_dataset
from data.synth_base import balanced_labels

REPO = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_seed_same_bytes_other_seed_differs(task, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_dataset(task, 4, tmp_path / name, seed=seed)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 5 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a), "a different seed must change every file"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_longer_run_extends_a_shorter_one(task):
    short, long = generate(task, 3, seed=5), generate(task, 7, seed=5)
    for s, l in zip(short, long):
        assert s.record("x.png") == l.record("x.png")
        assert s.image.tobytes() == l.image.tobytes()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_written_records_are_valid(task, tmp_path):
    path = write_dataset(task, 12, tmp_path, seed=1)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    for i, line in enumerate(lines):
        rec = json.loads(line)
        assert rec["image"] == f"images/{i:06d}.png"
        assert set(rec) <= {"image", "question", "answer", "bbox", "choices", "target_box"}
        assert isinstance(rec["question"], str) and rec["question"].endswith("?")
        assert isinstance(rec["answer"], str) and rec["answer"]
        with Image.open(path.parent / rec["image"]) as img:
            assert img.mode == "RGB"
            width, height = img.size
        if "bbox" in rec:
            x1, y1, x2, y2 = rec["bbox"]
            assert all(isinstance(v, int) for v in rec["bbox"])
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        if "choices" in rec:
            assert rec["answer"] in rec["choices"]
        if "target_box" in rec:  # where a crop should look (zoom): inside the image, around the bbox
            tx1, ty1, tx2, ty2 = rec["target_box"]
            assert 0 <= tx1 <= x1 < x2 <= tx2 <= width and 0 <= ty1 <= y1 < y2 <= ty2 <= height


@pytest.mark.parametrize("task", [name for name, spec in TASKS.items() if spec.classes])
def test_classification_answers_are_balanced(task):
    answers = [s.answer for s in generate(task, 60, seed=2)]
    counts = Counter(answers)
    assert set(counts) == set(TASKS[task].classes)
    assert max(counts.values()) - min(counts.values()) <= 1  # 60 = 10 x 6 colours = 15 x 4 patterns


def test_balanced_labels_are_block_permutations():
    labels = balanced_labels(np.random.default_rng(0), 10, 4)
    assert sorted(labels[:4]) == [0, 1, 2, 3] and sorted(labels[4:8]) == [0, 1, 2, 3]
    assert len(labels) == 10 and set(labels[8:]) <= {0, 1, 2, 3}


@pytest.mark.parametrize("task, n, seed, match", [
    ("nope", 3, 0, "unknown synthetic task 'nope'"),
    ("colors", 0, 0, "n must be a positive integer"),
    ("colors", 2, -1, "seed must be a non-negative integer"),
])
def test_bad_arguments_raise(task, n, seed, match):
    with pytest.raises(ValueError, match=match):
        generate(task, n, seed)


@pytest.mark.parametrize("hw, expected", [
    ((448, 448), (112, 112)),  # beta = sqrt(448*448 / 12544) = 4: 448 / 4 = 112 = 4 * 28
    ((448, 640), (84, 112)),  # beta = sqrt(286720 / 12544) = 4.781: 93.7 -> 3 * 28, 133.9 -> 4 * 28
    ((100, 70), (112, 56)),  # round(3.57) = 4, round(2.5) = 2 (half to even); 6272 px fits
    ((20, 40), (56, 84)),  # 28 * 28 < 3136: beta = 1.980, ceil(39.6 / 28) = 2, ceil(79.2 / 28) = 3
])
def test_smart_resize_hand_worked(hw, expected):
    assert smart_resize(*hw) == expected


def test_model_view_resizes_only_when_needed():
    big = Image.new("RGB", (640, 448), (200, 10, 10))
    assert model_view(big).size == (112, 84)
    small = Image.new("RGB", (84, 56), (1, 2, 3))
    assert model_view(small).tobytes() == small.tobytes()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data.synth", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_cli_writes_dataset_and_prints_summary(tmp_path):
    done = _cli("zoom", "--n", "4", "--out", str(tmp_path / "cli"), "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"synth zoom: n=4 out={tmp_path / 'cli' / 'data.jsonl'} "
                                   "answers: horizontal=1 vertical=1 checker=1 dots=1")
    write_dataset("zoom", 4, tmp_path / "api", seed=7)
    assert _files(tmp_path / "cli") == _files(tmp_path / "api")


@pytest.mark.parametrize("args, message", [
    (("nope", "--n", "3"), "invalid choice: 'nope'"),
    (("colors", "--n", "0"), "--n must be >= 1"),
])
def test_cli_bad_arguments_exit_2(args, message, tmp_path):
    done = _cli(*args, "--out", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "data.jsonl").exists()
