"""Offline, deterministic synthetic tasks for the demo: write a generic-JSONL dataset with its PNG images.

    python -m data.synth TASK --n N --out DIR [--seed S]

writes DIR/data.jsonl (one object a line: {"image": "images/000000.png", "question", "answer", "bbox"?: [x1, y1,
x2, y2] ints in original pixels with exclusive ends, "choices"?: [...], "target_box"?: the region a crop should
cover (zoom)) and DIR/images/NNNNNN.png, then prints a one-line summary. The same task, n and seed give
byte-identical files; sample i depends only on (seed, i) (and its class label on the first i labels), so a longer
run extends a shorter one.

Tasks (TASKS below): `colors` (name the square's colour), `zoom` (a fine pattern inside a bold box that only a
crop can read; see synth_zoom.py; `zoom2`: the same on a 2x2 grid), `grounding` (box of the <colour> <shape>), `geometry` (the third angle of a
triangle). Python API: `generate(task, n, seed) -> list[Sample]`, `write_dataset(task, n, out_dir, seed)`, and
`model_view(image)`: the image as the tiny Qwen2.5-VL sees it (smart resize to <= 112*112 pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data.synth_base import Sample, balanced_labels, model_view, smart_resize
from data.synth_tasks import COLOR_NAMES, make_colors, make_geometry, make_grounding
from data.synth_zoom import PATTERNS, make_zoom, make_zoom2

__all__ = ["TASKS", "Sample", "generate", "write_dataset", "model_view", "smart_resize", "main"]


@dataclass(frozen=True)
class TaskSpec:
    make: Callable[[np.random.Generator, int | None], Sample]  # (rng, class label or None) -> Sample
    classes: tuple[str, ...] = ()  # non-empty: answers are these, balanced by generate()


TASKS: dict[str, TaskSpec] = {
    "colors": TaskSpec(make_colors, COLOR_NAMES),
    "zoom": TaskSpec(make_zoom, PATTERNS),
    "zoom2": TaskSpec(make_zoom2, PATTERNS),
    "grounding": TaskSpec(make_grounding),
    "geometry": TaskSpec(make_geometry),
}
_LABEL_STREAM = 1  # sample i draws from default_rng([seed, 0, i]); the class labels from default_rng([seed, 1])


def _check_args(task: str, n: int, seed: int) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {sorted(TASKS)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return TASKS[task]


def generate(task: str, n: int, seed: int = 0) -> list[Sample]:
    """n samples of `task`; classification tasks get balanced labels (counts differ by at most one)."""
    spec = _check_args(task, n, seed)
    labels: list[int | None] = [None] * n
    if spec.classes:
        labels = balanced_labels(np.random.default_rng([seed, _LABEL_STREAM]), n, len(spec.classes))
    return [spec.make(np.random.default_rng([seed, 0, i]), label) for i, label in enumerate(labels)]


def write_dataset(task: str, n: int, out_dir: str | Path, seed: int = 0) -> Path:
    """Write out_dir/data.jsonl and out_dir/images/*.png; returns the JSONL's path. Overwrites files of the same
    names and leaves any other file in out_dir alone."""
    samples = generate(task, n, seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sample in enumerate(samples):
        rel = f"images/{i:06d}.png"
        # level 1: 3x faster than the default 6 on the noisy zoom images, and about as small
        sample.image.save(out / rel, format="PNG", compress_level=1)
        lines.append(json.dumps(sample.record(rel)))
    path = out / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def summary(task: str, path: Path, answers: list[str]) -> str:
    """One line: task, n, where, and the answer distribution (a count of distinct answers for free-form tasks)."""
    counts = Counter(answers)
    if TASKS[task].classes:
        dist = " ".join(f"{name}={counts[name]}" for name in TASKS[task].classes)
    else:
        dist = f"{len(counts)} distinct"
    return f"synth {task}: n={len(answers)} out={path} answers: {dist}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synth", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS), help="which synthetic task")
    parser.add_argument("--n", type=int, required=True, help="number of examples (>= 1)")
    parser.add_argument("--out", required=True, help="output folder: gets data.jsonl and images/")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0); same seed, same bytes")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")  # exits 2, like an unknown task
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    path = write_dataset(args.task, args.n, args.out, args.seed)
    answers = [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines()]
    print(summary(args.task, path, answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
