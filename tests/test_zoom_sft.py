"""data/zoom_sft.py: a generated zoom dataset -> seed-001 JSONL -> data.load_examples gives crop-then-answer SFT
targets whose crop box is the grid cell holding the dataset's bbox (or the bbox itself); and the two zoom presets (configs/zoom_*.toml) that use it.
Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_zoom_sft.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import load_examples
from data.example import open_image
from data.synth import write_dataset
from data.zoom_sft import a3_text, convert
from engine.config.settings import Config
from engine.config.parsing import build_config
from tools.registry import ToolLimits, call_tool

REPO = Path(__file__).resolve().parent.parent
N = 5


@pytest.fixture(scope="module")
def zoom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoom") / "zoom-train"
    write_dataset("zoom", N, out, seed=3)
    return out


def test_round_trip_through_load_examples(zoom_dir, tmp_path):
    out = tmp_path / "sft" / "zoom-sft.jsonl"  # another folder: image paths must be rewritten relative to it
    assert convert(zoom_dir, out, crop="box") == N
    source = [json.loads(line) for line in (zoom_dir / "data.jsonl").read_text().splitlines()]
    loaded = load_examples(out)
    assert loaded.format == "seed001" and len(loaded.examples) == N and not loaded.skipped
    for rec, ex, line in zip(source, loaded.examples, out.read_text().splitlines()):
        x1, y1, x2, y2 = rec["bbox"]
        # written by hand from the module docstring's template, not by calling a3_text
        assert ex.target == ("<think>\nThe bold box is small; I look closer.\n"
                             f"<tool_call>[{x1}, {y1}, {x2}, {y2}]</tool_call>\n</think>\n"
                             f"<answer>{rec['answer']}</answer>")
        assert ex.boxes == [[float(v) for v in rec["bbox"]]]  # the crop box IS the dataset bbox
        assert ex.answers == [rec["answer"]] and ex.question == rec["question"]
        raw = json.loads(line)
        assert not os.path.isabs(raw["image_path"]) and raw["image_path"].startswith("../")
        assert os.path.samefile(ex.images[0], zoom_dir / rec["image"])
        assert raw["image_id"] == Path(rec["image"]).stem


def test_default_crop_is_the_grid_cell_holding_the_box(zoom_dir, tmp_path):
    out = tmp_path / "zoom-cell.jsonl"
    assert convert(zoom_dir, out) == N
    source = [json.loads(line) for line in (zoom_dir / "data.jsonl").read_text().splitlines()]
    for rec, ex in zip(source, load_examples(out).examples):
        side = open_image(ex.images[0]).width
        cell = side // 4
        x1, y1, x2, y2 = rec["bbox"]
        col, row = x1 // cell, y1 // cell  # computed here from the layout rule, not with cell_of
        assert ex.boxes == [[col * cell, row * cell, (col + 1) * cell, (row + 1) * cell]]
        # the crop is also the example's target (metadata), where the RL diagnostics check crops land
        assert ex.metadata["target_box"] == [col * cell, row * cell, (col + 1) * cell, (row + 1) * cell]
        assert rec["target_box"] == ex.metadata["target_box"]  # synth wrote the same cell into the generic JSONL
        assert col * cell < x1 < x2 < (col + 1) * cell and row * cell < y1 < y2 < (row + 1) * cell
        assert f"<tool_call>[{col * cell}, {row * cell}, {(col + 1) * cell}, {(row + 1) * cell}]</tool_call>" in ex.target
    with pytest.raises(ValueError, match="crop 'middle'"):
        convert(zoom_dir, out, crop="middle")


def test_zoom2_crop_is_its_quadrant(tmp_path):
    src = tmp_path / "zoom2"
    write_dataset("zoom2", 8, src, seed=4)
    out = tmp_path / "zoom2-sft.jsonl"
    assert convert(src, out) == 8
    for rec, ex in zip(map(json.loads, (src / "data.jsonl").read_text().splitlines()), load_examples(out).examples):
        x1, y1 = rec["bbox"][:2]
        quadrant = [x1 // 112 * 112, y1 // 112 * 112, x1 // 112 * 112 + 112, y1 // 112 * 112 + 112]
        assert ex.boxes == [quadrant] and ex.metadata["target_box"] == quadrant  # 2x2, not the 4x4 rule's cells


def test_sft_crop_is_the_bold_box(zoom_dir, tmp_path):
    """The crop the SFT target asks for, run as engine/algo/sft.py runs it, shows the box's dark border all round."""
    out = tmp_path / "zoom-sft.jsonl"
    convert(zoom_dir, out, crop="box")
    for ex in load_examples(out).examples:
        image = open_image(ex.images[0])
        result = call_tool("crop", {"box": ex.boxes[0]}, image, ToolLimits())
        assert result.error is None
        crop = np.asarray(image.crop(tuple(int(v) for v in ex.boxes[0])).convert("L"), dtype=float)
        # border 8-10 px of grey 15-45 plus noise std 8: each 4 px edge strip is dark; the interior mean is 125-145
        for strip in (crop[:4], crop[-4:], crop[:, :4], crop[:, -4:]):
            assert strip.mean() < 70
        assert crop[12:-12, 12:-12].mean() > 100


def test_fractional_boxes_keep_their_digits(tmp_path):
    assert a3_text([1, 2.5, 30, 40.0], "dots") == ("<think>\nThe bold box is small; I look closer.\n"
                                                   "{Crop bold box [1, 2.5, 30, 40]}\n</think>\n<answer>dots</answer>")


def test_dataset_without_boxes_is_refused(tmp_path):
    src = tmp_path / "geo"
    write_dataset("geometry", 2, src, seed=0)
    with pytest.raises(ValueError, match=r"data.jsonl:1: a zoom example needs exactly one bbox"):
        convert(src, tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="no zoom dataset here"):
        convert(tmp_path / "missing", tmp_path / "out.jsonl")


def test_cli(zoom_dir, tmp_path):
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run([sys.executable, "-m", "data.zoom_sft", "--src", str(zoom_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{N} crop-then-answer examples" in proc.stdout and len(out.read_text().splitlines()) == N
    proc = subprocess.run([sys.executable, "-m", "data.zoom_sft", "--src", str(tmp_path / "nope"), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no zoom dataset here" in proc.stderr


def _flat(cfg, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(_flat(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {prefix + f.name: value})
    return out


def test_zoom_presets_differ_only_in_tools():
    """configs/zoom_tools.toml vs zoom_notools.toml: same budgets; the tools one trains on this module's output, whose
    header commands write the files it names."""
    tools = build_config(Config, toml_path=str(REPO / "configs" / "zoom_tools.toml"))
    plain = build_config(Config, toml_path=str(REPO / "configs" / "zoom_notools.toml"))
    a, b = _flat(tools), _flat(plain)
    assert {key for key in a if a[key] != b[key]} == {
        "data.train", "sft.final_train", "data.sft_template", "rollout.protocol", "reward.weights", "train.out_dir"}
    assert (tools.rollout.protocol, plain.rollout.protocol) == ("inline", None)
    # the same zoom2 examples: the tools arm's SFT targets crop a random quadrant, then (the last 100 steps) their own
    assert tools.data.train == "runs/data/zoom2-sft-rand.jsonl" and tools.sft.final_train == "runs/data/zoom2-sft.jsonl"
    assert plain.data.train == plain.sft.final_train == "runs/data/zoom2-train/data.jsonl"
    assert tools.sft.final_steps == plain.sft.final_steps == 100 < tools.sft.steps
    assert tools.data.eval == plain.data.eval == "runs/data/zoom2-eval/data.jsonl"
    assert plain.reward.weights == {"format": 0.2, "accuracy": 1.0}
    assert tools.reward.weights == {**plain.reward.weights, "tool_success": 0.1}
    # the control's SFT target is the tools target without its crop line
    crop_line = "{Crop bold box [1, 2, 3, 4]}\n"
    assert plain.data.sft_template.format(answer="dots") == a3_text([1, 2, 3, 4], "dots").replace(crop_line, "")


def test_random_crop_draws_cells_uniformly_and_keeps_the_target(tmp_path):
    """--crop random: each target crops one of the 4 quadrants at random (whatever the image shows), target_box stays
    the box's own quadrant, the answer stays the true pattern, and the draws follow the seed."""
    src = tmp_path / "zoom2"
    write_dataset("zoom2", 40, src, seed=5)
    quadrants = [[x, y, x + 112, y + 112] for y in (0, 112) for x in (0, 112)]
    drawn = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"rand{seed}.jsonl"
        assert convert(src, out, crop="random", seed=seed) == 40
        boxes = []
        for rec, ex in zip(map(json.loads, (src / "data.jsonl").read_text().splitlines()), load_examples(out).examples):
            x1, y1 = rec["bbox"][:2]
            own = [x1 // 112 * 112, y1 // 112 * 112, x1 // 112 * 112 + 112, y1 // 112 * 112 + 112]
            assert ex.metadata["target_box"] == own and ex.answers == [rec["answer"]]
            assert ex.boxes[0] in quadrants
            boxes.append((ex.boxes[0], own))
        if seed in drawn:
            assert boxes == drawn[seed]  # same seed, same draws
        drawn[seed] = boxes
    assert drawn[0] != drawn[1]
    for boxes in drawn.values():
        hits = sum(box == own for box, own in boxes)
        assert 2 <= hits <= 20  # P(hit) = 1/4: 10 of 40 expected; a crop that follows the box would hit 40
        assert len({tuple(box) for box, _ in boxes}) == 4  # every quadrant is drawn


def test_random_crop_refuses_a_target_box_off_the_grid(tmp_path):
    src = tmp_path / "zoom2"
    write_dataset("zoom2", 3, src, seed=6)
    lines = (src / "data.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["target_box"] = [0, 0, 100, 112]
    lines[1] = json.dumps(rec)
    (src / "data.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data.jsonl:2: target_box \[0, 0, 100, 112\] is not a cell"):
        convert(src, tmp_path / "out.jsonl", crop="random")


def test_on_target_fraction_crops_the_own_cell_more_often(tmp_path):
    """--on-target P: a fraction P of the examples crop their own quadrant, the rest a uniform draw, so about
    P + (1 - P) / 4 of all crops hit; refused outside [0, 1] and without --crop random."""
    src = tmp_path / "zoom2"
    write_dataset("zoom2", 200, src, seed=7)
    rates = {}
    for p in (0.0, 0.6, 1.0):
        out = tmp_path / f"mix{p}.jsonl"
        convert(src, out, crop="random", on_target=p)
        examples = load_examples(out).examples
        rates[p] = sum(ex.boxes[0] == ex.metadata["target_box"] for ex in examples) / len(examples)
    assert 0.15 <= rates[0.0] <= 0.35 and 0.6 <= rates[0.6] <= 0.8 and rates[1.0] == 1.0
    for bad in ({"crop": "random", "on_target": 1.5}, {"crop": "cell", "on_target": 0.2}):
        with pytest.raises(ValueError, match="on_target"):
            convert(src, tmp_path / "bad.jsonl", **bad)


def test_zoom_tools_header_writes_what_the_preset_reads():
    """The data commands at the top of configs/zoom_tools.toml produce the files its data.train, sft.final_train
    and data.eval name (so a user who runs them gets a preset that starts)."""
    text = (REPO / "configs" / "zoom_tools.toml").read_text()
    tools = build_config(Config, toml_path=str(REPO / "configs" / "zoom_tools.toml"))
    commands = [line[1:].strip() for line in text.splitlines() if line.startswith("#   python -m data.")]
    outs = {c.split("--out ")[1].split()[0] for c in commands}
    assert tools.data.train in outs and tools.sft.final_train in outs
    assert str(Path(tools.data.eval).parent) in outs
    assert any("--crop random" in c and tools.data.train in c for c in commands)
