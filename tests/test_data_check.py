"""Tests of the `python -m data.check` CLI: exit codes, the summary and bad-record messages.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_data_check.py

Two tests run the real module in a subprocess (about 2 s each: they prove it runs from the repo root and exits
without a traceback); the rest call `data.check.main(argv)` in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from data.check import main
from tests.data_fixtures import (
    TARGET_TWO_CROPS, handmade_hf_disk, save_png, save_truncated_png, seed001_dataset, seed001_lines, write_lines,
)

REPO = Path(__file__).resolve().parents[1]


def run_check(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "data.check", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_summarises_a_good_dataset(tmp_path):
    path = seed001_dataset(tmp_path)
    done = run_check(path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["format: seed001", "examples: 3 (skipped 0)", f"example {path}:1:"]
    assert "  answers: ['a dark jacket']" in lines and "  images: 1 (640x480)" in lines
    assert "  boxes: [[0.0, 141.43, 79.23, 480.0], [10.0, 141.5, 60.25, 200.0]]" in lines
    assert f"  target: {TARGET_TWO_CROPS[:200]!r}" in lines


def test_cli_bad_record_exits_2_without_traceback(tmp_path):
    seed001_dataset(tmp_path)
    lines = seed001_lines()
    lines[2]["QnA"][0]["A3"] = "{Crop sign [1, 2, 3]}<answer>x</answer>"
    path = write_lines(tmp_path / "bad.jsonl", lines)
    done = run_check(path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f'{path}:3: QnA[0]: malformed crop call "{{Crop sign [1, 2, 3]}}": expected 4 numbers [x1, y1, x2, y2], got 3',
        f"1 bad records in {path} (2 good): fix them, or leave them out with --skip-bad (data.skip_bad = true when "
        "training)"]


def test_skip_bad_reports_each_and_exits_0(tmp_path, capsys):
    seed001_dataset(tmp_path)
    lines = seed001_lines()
    lines[0]["QnA"][1]["A3"] = "no answer here"
    lines[2]["image_path"] = "imgs/gone.png"
    path = write_lines(tmp_path / "bad.jsonl", lines)
    assert main([str(path), "--skip-bad"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == ["format: seed001", "examples: 1 (skipped 2)",
                       f"skipped: {path}:1: QnA[1]: A3 has no <answer>...</answer>",
                       f"skipped: {path}:3: image file not found: {tmp_path / 'imgs' / 'gone.png'}",
                       "skipped 2 bad records"]


def test_check_decodes_every_image(tmp_path, capsys):
    save_truncated_png(tmp_path / "cut.png")  # the header is fine, so only a full decode finds the damage
    path = write_lines(tmp_path / "t.jsonl", [{"image": "cut.png", "question": "q", "answer": "a"}])
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:1: cannot read image {tmp_path / 'cut.png'}: ")


def test_every_bad_record_is_named_in_one_pass(tmp_path, capsys):
    save_png(tmp_path / "ok.png", (8, 8))
    save_truncated_png(tmp_path / "cut.png")
    good = {"image": "ok.png", "question": "q", "answer": "a"}
    path = write_lines(tmp_path / "t.jsonl", [good, {**good, "image": "cut.png"}, "{broken", {**good, "answer": ""},
                                              good, {**good, "answer": ["   "]}])
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in err[:-1]] == [f"{path}:{n}" for n in (2, 3, 4, 6)]
    assert "invalid JSON" in err[1] and "empty reference answer" in err[2] and "empty reference answer" in err[3]
    assert err[-1].startswith(f"4 bad records in {path} (2 good)")
    assert main([str(path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "examples: 2 (skipped 4)" in out and out.count("skipped: ") == 4


def test_oversized_image_is_downsized_or_refused(tmp_path, capsys):
    save_png(tmp_path / "big.png", (400, 300))
    path = write_lines(tmp_path / "t.jsonl", [{"image": "big.png", "question": "q", "answer": "a",
                                               "bbox": [40, 30, 200, 150]}])
    assert main([str(path), "--max-image-pixels", "30000"]) == 0  # 120000 pixels: halved on each side
    out = capsys.readouterr().out
    assert f"note: {path}:1: image {tmp_path / 'big.png'} is 400x300 = 120000 pixels, over data.max_image_pixels = 30000" in out
    assert "downsized to 200x150" in out and "images: 1 (200x150)" in out and "boxes: [[20.0, 15.0, 100.0, 75.0]]" in out
    assert main([str(path), "--max-image-pixels", "30000", "--refuse-oversized"]) == 2
    assert "over data.max_image_pixels = 30000: shrink it, raise the cap" in capsys.readouterr().err


def test_missing_path_unknown_format_and_empty_dataset_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope'}: no such file or folder\n"
    (tmp_path / "notes.txt").write_text("hello\n")
    assert main([str(tmp_path / "notes.txt")]) == 2
    assert "unrecognised data format" in capsys.readouterr().err
    save_png(tmp_path / "ds" / "x.png", (4, 4))
    folder = handmade_hf_disk(tmp_path / "ds", [{"bytes": None, "path": None}])
    assert main([str(folder), "--skip-bad"]) == 2  # every record was bad: nothing to train on
    captured = capsys.readouterr()
    assert "skipped 1 bad records" in captured.out and captured.err == f"{folder}: no examples to train on\n"


def test_split_and_image_root_reach_the_loader(tmp_path, capsys):
    save_png(tmp_path / "root" / "imgs" / "street.png", (640, 480))
    save_png(tmp_path / "root" / "imgs" / "sign.png", (100, 50))
    path = write_lines(tmp_path / "train.jsonl", seed001_lines())
    assert main([str(path), "--image-root", str(tmp_path / "root")]) == 0
    assert "examples: 3 (skipped 0)" in capsys.readouterr().out
    assert main([str(path), "--split", "test"]) == 2
    assert "has no splits" in capsys.readouterr().err


def test_cli_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    # 3000 bad records with --skip-bad print one 'skipped:' line each: far more than a pipe buffer holds, so the
    # writer meets a closed pipe once the reader (as `| head -1` does) has gone
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join('{"question": "q", "answer": "a", "image": "missing.png"}\n' for _ in range(3000)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "data.check", str(bad), "--skip-bad"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert first.startswith("format: jsonl")
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_every_split_of_a_folder_is_checked(tmp_path, capsys):
    """A Geometry3K folder with train, validation and test: all three are read (the bad record is in validation,
    which a check of the train split alone would pass), each one counted; --split still checks one."""
    from tests.data_fixtures import geometry3k_dataset

    folder = geometry3k_dataset(tmp_path / "geo")
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert "validation-00000-of-00001.parquet:row 0" in err and "1 bad records" in err
    assert main([str(folder), "--skip-bad"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["format: geometry3k", "examples: 3 (skipped 1)",
                       "splits: test 1, train 2, validation 0 (skipped 1) (every split checked; --split S checks one)"]
    assert main([str(folder), "--split", "train"]) == 0
    assert capsys.readouterr().out.splitlines()[1:3] == ["examples: 2 (skipped 0)", "splits: train 2"]
