"""eval.py and its report: only held-out data needed; a model folder, a run, a checkpoint or a LoRA checkpoint
(merged on the fly, equal to the run's merged export); predictions.jsonl and an index.html that opens from disk
in headless Chromium with its images, crop boxes and SVG plots (training curves included for a run).

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_eval_report.py` (Chromium: apt-get install chromium).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval as eval_cli
import train as train_cli
from engine.report.eval_report import write_report
from engine.report.evaluate import EvalResult, example_record
from engine.setup.model_source import load_any, resolve_model
from engine.rollout.trajectory import ToolCallRecord
from models.tiny import tiny_model_dir
from tests.test_view import BOX, _chromium, _traj
from tools.plots import histogram, line_chart

DEMO = ["--config", "configs/demo.toml"]
ROOT = Path(__file__).resolve().parents[1]


def fake_result() -> EvalResult:
    """Three answered examples (tests/test_view.py's): a good crop, a failed crop, no call."""
    trajs = [_traj(0, [ToolCallRecord("crop", {"box": BOX}, True)], "eos"),
             _traj(1, [ToolCallRecord("crop", {"box": [300, 0, 400, 50]}, False, "crop: box outside")], "eos"),
             _traj(2, [], "length")]
    parts = [{"format": 1.0, "accuracy": 1.0}, {"format": 1.0, "accuracy": 0.0}, {"format": 0.0, "accuracy": 0.0}]
    records = [example_record(t, p) for t, p in zip(trajs, parts)]
    metrics = {"format": 2 / 3, "accuracy": 1 / 3, "tool_call_rate": 2 / 3, "num_examples": 3}
    return EvalResult(metrics=metrics, records=records, trajectories=trajs)


def test_report_opens_from_disk_with_images_boxes_and_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:  # a run's curves: 5 steps, one line cut short by a crash
        for step in range(1, 6):
            f.write(json.dumps({"step": step, "reward/total": 0.1 * step, "train/kl": 0.01 * step,
                                "length/response_mean": 20 + step, "tools/call_rate": 1.0}) + "\n")
        f.write('{"step": 6, "reward/tot')
    page = write_report(tmp_path / "eval", fake_result(), title="eval", box_frame="pixels", run_dir=run)
    rows = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    assert [r["answer"] for r in rows] == ["vertical", "dots", None]  # extracted; the reference is separate
    assert rows[0]["reference"] == "vertical" and rows[0]["images"] == ["images/00000_0.png", "images/00000_1.png"]
    assert rows[1]["tool_calls"][0]["error"] == "crop: box outside" and rows[2]["stop"] == "length"

    dom = _chromium(["--dump-dom", page.resolve().as_uri()], tmp_path).stdout
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == 4 and all('data-loaded="1"' in tag for tag in imgs), dom[:2000]  # 3 originals + 1 crop
    # the good crop's box in percent of 200x160, as tools/view.py draws it
    assert re.findall(r'<div class="box"[^>]*style="([^"]*)"', dom) == [
        "left:20.000%;top:12.500%;width:50.000%;height:50.000%;border-color:#e6194b"]
    kinds = re.findall(r'<svg class="plot" data-kind="(\w+)" data-title="([^"]*)"', dom)
    assert ("bars", "mean per metric") in kinds
    assert {t for k, t in kinds if k == "histogram"} == {"format", "accuracy"}
    assert {t for k, t in kinds if k == "line"} == {"reward (train)", "KL to the reference",
                                                    "response length (tokens)", "tool-call rate"}
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,1600", page.resolve().as_uri()], tmp_path)
    assert np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64).std() > 20, "blank screenshot"


def test_plots_by_hand():
    # 4 values in [0, 1] over 2 bins: 0.0 and 0.5 fall in the first half-open bin... 0.5 starts the second
    svg = histogram("acc", [0.0, 0.5, 1.0, 1.0], bins=2)
    assert re.findall(r"<title>([^<]*)</title></rect>", svg) == ["0-0.5: 1", "0.5-1: 3"]
    line = line_chart("kl", [(1, 0.0), (2, float("nan")), (3, 1.0)])  # NaN skipped, not drawn
    # x from the 52 px margin to 360 - 10; y from 24 (top) to 180 - 26 = 154 (bottom)
    assert re.search(r'points="([^"]*)"', line).group(1) == "52.0,154.0 350.0,24.0"
    flat = line_chart("loss", [(1, 0.0), (2, 0.0)])  # a flat line sits mid-axis, and the axis says -0.5 .. 0.5
    assert 'points="52.0,89.0 350.0,89.0"' in flat and ">0.5</text>" in flat and ">-0.5</text>" in flat
    assert ">5.5e-04</text>" in line_chart("loss", [(1, 0.00055), (2, 0.00012)])  # fits the axis margin


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run of 2 SFT steps (checkpoint holds the adapter; the run ends with merged/) and its held-out data."""
    root = tmp_path_factory.mktemp("lora")
    from data.synth import main as synth

    assert synth(["colors", "--n", "6", "--out", str(root / "data"), "--seed", "3"]) == 0
    data = str(root / "data" / "data.jsonl")
    assert train_cli.main([*DEMO, "--data.train", data, "--data.eval", data, "--train.stage", "sft",
                           "--sft.steps", "2", "--sft.batch_size", "2", "--sft.lr", "1e-2",
                           "--lora.r", "4", "--train.tensorboard", "false",
                           "--train.out_dir", str(root / "run"), "--train.threads", "1"]) == 0
    return root / "run", data


def test_model_paths_resolve_and_lora_merges_like_the_export(lora_run):
    run, _ = lora_run
    ckpt = run / "checkpoints" / "step_000002"
    assert resolve_model(run).model_dir == run / "merged"  # a LoRA run's final model is its merged export
    adapter = resolve_model(ckpt)
    assert adapter.adapter_dir == ckpt / "model" and adapter.model_dir == tiny_model_dir("qwen2_5_vl")
    assert adapter.run_dir == run and resolve_model(ckpt / "model") == adapter
    merged_now, _ = load_any(ckpt)
    exported, _ = load_any(run / "merged")
    base, _ = load_any(tiny_model_dir("qwen2_5_vl"))
    a, b, c = (dict(m.model.named_parameters()) for m in (merged_now, exported, base))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # on the fly == the run's export
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4  # and the adapter did change the model
    with pytest.raises(ValueError, match="holds no model"):
        resolve_model(run / "checkpoints")


def test_eval_needs_only_a_model_and_held_out_data(lora_run, tmp_path, capsys):
    run, data = lora_run
    ckpt = str(run / "checkpoints" / "step_000002")
    assert eval_cli.main([*DEMO, "--model.path", ckpt, "--data.eval", data, "--data.num_eval_examples", "4"]) == 0
    out = capsys.readouterr().out
    assert "(LoRA, merged into" in out and f"the report {run}/eval/index.html" in out
    rows = [json.loads(line) for line in open(run / "eval" / "predictions.jsonl")]
    assert len(rows) == 4 and {"question", "reference", "answer", "format", "accuracy", "tool_calls"} <= rows[0].keys()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 4 and metrics["accuracy"] == sum(r["accuracy"] for r in rows) / 4
    page = (run / "eval" / "index.html").read_text()
    assert 'data-title="SFT loss"' in page and 'data-title="held-out accuracy"' in page and page.count('<section class="rollout"') == 4  # run curves

    plain = tmp_path / "plain"  # a plain model folder: no run, so no curves; --out chooses the folder
    assert eval_cli.main([*DEMO, "--model.path", str(tiny_model_dir("qwen2_5_vl")), "--data.eval", data,
                          "--data.num_eval_examples", "2", "--out", str(plain)]) == 0
    assert 'data-kind="line"' not in (plain / "index.html").read_text()
    assert eval_cli.main([*DEMO, "--data.eval", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_make_eval_writes_the_demo_data_first():
    import subprocess

    proc = subprocess.run(["make", "-n", "eval", "ARGS=--config configs/demo.toml --model.path DIR"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = [line for line in proc.stdout.splitlines() if "demo.py" in line or "eval.py" in line]
    assert [("--data-only" in line, "eval.py" in line) for line in lines] == [(True, False), (False, True)], proc.stdout
