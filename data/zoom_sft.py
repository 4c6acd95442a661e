"""Crop-then-answer SFT targets for the `zoom` task: a generic-JSONL zoom dataset in, seed 001's QnA JSONL out.

    python -m data.synth zoom --n 200 --out runs/data/zoom-train
    python -m data.zoom_sft --src runs/data/zoom-train --out runs/data/zoom-sft.jsonl

Each example becomes one line `{"image_path", "image_id", "QnA": [{"Q": question, "A3": A3}]}` with A3 =

    <think>
    The bold box is small; I look closer.
    {Crop bold box [x1, y1, x2, y2]}
    </think>
    <answer>{answer}</answer>

where the box (original-image pixels, exclusive ends) is, with `--crop cell` (the default), the grid cell
holding the dataset's "bbox" (the record's "target_box" where it has one: zoom's 4x4 grid, zoom2's 2x2; else
4x4; data/synth_zoom.py: a crop a tiny model learns to choose), with `--crop box` the bbox itself (for a model
that can regress pixel boxes), or with `--crop random` a cell of the same grid drawn uniformly at random, whatever
the image shows (seeded by `--seed`): such targets teach the call's format and reading the crop (the answer is
still the true pattern) but not where to look, which is left to RL's reward; `--on-target P` makes a fraction P of
them crop the box's own cell instead, a weak start on where to look that RL then finishes (configs/zoom_tools.toml).
image_path is relative to the output file's folder; "target_box" is always the box's own cell (the loader keeps it
as the example's metadata, which the RL diagnostics and the optional crop_target reward read). `data.load_examples` reads
the file as "seed001": the crop becomes the SFT target's `<tool_call>[x1, y1, x2, y2]</tool_call>` and the
Example's box, the <answer> its reference answer, so the same file feeds the SFT stage (crop, see the crop, answer)
and the RL stage. The choices are dropped (seed 001 has no field for them): put the options in
`data.question_template` instead. `--src` is the dataset's folder (holding
data.jsonl) or the JSONL file itself; every example must have exactly one box.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from PIL import Image

from data import load_examples
from data.example import displayed_size
from data.synth_zoom import cell_of

CROPS = ("cell", "box", "random")
REASONING = "The bold box is small; I look closer."
A3_TEMPLATE = "<think>\n{reasoning}\n{{Crop bold box {box}}}\n</think>\n<answer>{answer}</answer>"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def a3_text(box, answer: str, reasoning: str = REASONING) -> str:
    """Seed 001's A3 string for one crop of `box` (original pixels) followed by `answer`."""
    shown = "[" + ", ".join(_number(v) for v in box) + "]"
    return A3_TEMPLATE.format(reasoning=reasoning, box=shown, answer=answer)


def grid_cells(target, image_size) -> list[list[int]]:
    """The cells of the grid that `target` (one cell, original pixels, exclusive ends) belongs to, row by row."""
    width, height = image_size
    cell_w, cell_h = target[2] - target[0], target[3] - target[1]
    grid = round(width / cell_w) if cell_w > 0 else 0
    cells = [[c * width // grid, r * height // grid, (c + 1) * width // grid, (r + 1) * height // grid]
             for r in range(grid) for c in range(grid)] if cell_h > 0 and grid == round(height / cell_h) else []
    if [int(v) for v in target] not in cells:
        raise ValueError(f"target_box {list(target)} is not a cell of a square grid over a {width}x{height} image")
    return cells


def convert(src, out, crop: str = "cell", seed: int = 0, on_target: float = 0.0) -> int:
    """Write `out` (seed-001 JSONL) from the generic-JSONL zoom dataset at `src`, cropping each example's grid
    cell (crop="cell"), its bbox (crop="box"), or a grid cell drawn uniformly at random, whatever the image shows
    (crop="random", seeded by `seed`; "target_box" stays the box's own cell; with `on_target` = P, a fraction P
    of the examples, drawn at random, crop the box's own cell instead); returns the number of lines."""
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r}: choose one of {', '.join(CROPS)}")
    if not 0.0 <= on_target <= 1.0 or (on_target and crop != "random"):
        raise ValueError(f"on_target {on_target}: a fraction in [0, 1], and only with crop='random'")
    src, out = Path(src), Path(out)
    data = src / "data.jsonl" if src.is_dir() else src
    if not data.is_file():
        raise ValueError(f"{src}: no zoom dataset here (expected a folder with data.jsonl from "
                         f"`python -m data.synth zoom --out DIR`, or that JSONL file)")
    loaded = load_examples(data)
    if loaded.format != "jsonl":
        raise ValueError(f"{data}: expected a generic JSONL dataset, got the {loaded.format} format")
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    rng = random.Random(seed)
    for ex in loaded.examples:
        if len(ex.boxes) != 1:
            raise ValueError(f"{ex.origin}: a zoom example needs exactly one bbox to crop, got {len(ex.boxes)}")
        if "\n" in ex.answer or "<" in ex.answer:
            raise ValueError(f"{ex.origin}: answer {ex.answer!r} cannot sit inside <answer>...</answer>")
        image = ex.images[0]
        box = ex.boxes[0]
        if crop != "box":
            with Image.open(image) as im:
                size = displayed_size(im)  # the frame boxes are in (EXIF orientation applied)
            # the generator's own cell (zoom: 4x4, zoom2: 2x2) where the record has one, else the 4x4 cell
            box = [float(v) for v in ex.metadata.get("target_box") or cell_of(box, size)]
        target = [json.loads(_number(v)) for v in box]  # ints stay ints, as in the A3 text
        if crop == "random":
            try:
                cells = grid_cells(target, size)
                box = target if on_target and rng.random() < on_target else rng.choice(cells)
            except ValueError as exc:
                raise ValueError(f"{ex.origin}: {exc}") from None
        rel = Path(os.path.relpath(image, os.path.abspath(out.parent))).as_posix()
        lines.append(json.dumps({"image_path": rel, "image_id": Path(image).stem, "target_box": target,
                                 "QnA": [{"Q": ex.question, "A3": a3_text(box, ex.answer)}]}))
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.zoom_sft", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="zoom dataset folder (with data.jsonl) or its JSONL file")
    parser.add_argument("--out", required=True, help="seed-001 JSONL file to write")
    parser.add_argument("--crop", choices=CROPS, default="cell",
                        help="what the SFT target crops: the grid cell holding the bold box (default), the box, "
                             "or a cell drawn at random (teaches the call and the reading, leaves where to look to RL)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --crop random's draws (default 0)")
    parser.add_argument("--on-target", type=float, default=0.0,
                        help="with --crop random: the fraction of examples that crop the box's own cell instead "
                             "(default 0); a little of where to look, for RL to finish")
    args = parser.parse_args(argv)
    try:
        n = convert(args.src, args.out, args.crop, args.seed, args.on_target)
    except ValueError as exc:  # BadRecord is a ValueError: file:line: reason
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"zoom_sft: {n} crop-then-answer examples -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
