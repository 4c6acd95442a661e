"""Reports a person reads at a glance (tools/plots.py, tools/view.py, engine/report/eval_report.py): the SVGs' axis
ranges read back (rates on [0, 1], no 1e-12 axis, a flat line inside a band), every bar labelled, a single-valued
histogram as one labelled bar, a held-out curve per headline metric; grounding examples carry and draw the reference
and predicted boxes (pixels, IoU beside them) under the weighted reward and its parts, and the prefill is shown.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_report_reads.py` (Chromium: apt-get install chromium).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from data.example import Example
from engine.report.eval_report import curve_specs, read_curves, write_report
from engine.report.evaluate import EvalResult, example_record
from rewards.grounding import box_record
from rewards.registry import RewardContext
from tests.test_view import _chromium, _traj
from tools import view
from tools.plots import bar_chart, histogram, line_chart


def y_axis(svg: str) -> tuple[str, str]:
    """The y axis's two labels as drawn (bottom, top)."""
    return (re.search(r'<text class="y-lo"[^>]*>([^<]*)</text>', svg).group(1),
            re.search(r'<text class="y-hi"[^>]*>([^<]*)</text>', svg).group(1))


def test_axis_ranges_read_back():
    assert y_axis(line_chart("call rate", [(1, 0.0), (2, 0.0)], rate=True)) == ("0", "1")  # not -0.5 .. 0.5
    assert y_axis(line_chart("held-out iou", [(1, 0.2), (2, 0.4)], rate=True)) == ("0", "1")
    assert y_axis(line_chart("loss", [(1, 0.2), (2, 0.4)])) == ("0.2", "0.4")  # not a rate: its own span
    assert y_axis(line_chart("kl", [(1, 3.0), (2, 3.0)])) == ("2.5", "3.5")  # flat: a band around it
    assert y_axis(line_chart("length", [(1, 40.0), (2, 40.0)])) == ("36", "44")  # ±10 % of a large value
    assert y_axis(line_chart("blind", [(1, -0.5), (2, 1.0)], rate=True)) == ("-0.5", "1")  # not a fraction
    zeros = histogram("iou", [0.0, 0.0, 0.0], rate=True)
    assert y_axis(zeros) == ("0", "3")  # the count, not 1e-12
    assert re.findall(r'<rect x[^>]*><title>([^<]*)</title>', zeros) == ["0: 3"]  # one bar: the value, the count
    assert "every example: 0" in zeros and ">3 examples<" in zeros and '<text class="bar-label"' in zeros
    spread = histogram("accuracy", [0.0, 1.0, 1.0, 1.0], bins=2, rate=True)
    assert re.findall(r'class="bar-label"[^>]*>([^<]*)<', spread) == ["1", "3"]  # every non-empty bar says its count
    assert y_axis(histogram("nothing", [])) == ("0", "1")


def test_every_bar_of_the_means_is_labelled():
    means = {"iou": 0.25, "iou50": 0.0, "format": 1.0, "tool_call_rate": 0.0, "reasoning": 0.5}
    svg = bar_chart(means)
    assert re.findall(r'class="bar-name"[^>]*>([^<]*)<', svg) == list(means)
    assert re.findall(r'class="bar-label"[^>]*>([^<]*)<', svg) == ["0.25", "0", "1", "0", "0.5"]
    assert (re.search(r'data-x-lo="([^"]*)"', svg).group(1), re.search(r'data-x-hi="([^"]*)"', svg).group(1)) == (
        "0", "1")  # all fractions: the axis is [0, 1]
    assert re.search(r'data-x-hi="([^"]*)"', bar_chart({"reward": 1.8, "format": 1.0})).group(1) == "1.8"


def test_a_held_out_curve_for_every_headline_metric(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 5, "eval/iou": 0.1, "eval/iou50": 0.0, "eval/accuracy": 0.3}, {"step": 6, "reward/total": 1.0},
        {"step": 10, "eval/iou": 0.3, "eval/iou50": 0.5}]))
    specs = curve_specs(["iou", "iou50"])
    assert [(k, t) for k, t, _ in specs[:2]] == [("eval/iou", "held-out iou"), ("eval/iou50", "held-out iou50")]
    curves = read_curves(tmp_path, specs)
    assert curves["eval/iou"] == [(5, 0.1), (10, 0.3)] and curves["eval/iou50"] == [(5, 0.0), (10, 0.5)]
    assert "eval/accuracy" not in curves  # not a headline metric of this run


def grounding_result() -> EvalResult:
    """Two grounding answers on a 200x160 image, boxes in pixels: one overlapping the reference, one with no box."""
    ref = [40.0, 20.0, 140.0, 100.0]
    trajs = [_traj(0, [], "eos"), _traj(1, [], "eos")]
    trajs[0].text, trajs[1].text = "I look.</think><answer>[90, 20, 190, 100]</answer>", "I look.</think><answer>"
    records = []
    for t in trajs:
        t.prompt.example = Example("Where is the red square?", ["red square"], [b""], boxes=[ref])
        t.prompt.prefill = "Let me analyze this image.\n<think>"
        ctx = RewardContext(images=t.images, box_frame="pixels", image_sizes=[(200, 160)],
                            prompt_prefill=t.prompt.prefill)
        rec = box_record(t.text, t.prompt.example, ctx)
        iou = rec["box_iou"] or 0.0
        records.append(example_record(t, {"iou": iou, "format": 1.0, "iou50": float(iou >= 0.5)},
                                      reward=iou + 1.0, weights={"iou": 1.0, "format": 1.0}, ctx=ctx))
    metrics = {"iou": records[0]["iou"] / 2, "format": 1.0, "iou50": 0.0, "tool_call_rate": 0.0, "num_examples": 2,
               "eval_overlaps_train": 0}
    return EvalResult(metrics=metrics, records=records, trajectories=trajs)


def test_grounding_records_carry_both_boxes_in_pixels():
    result = grounding_result()
    first, second = result.records
    # by hand: [90, 20, 190, 100] against [40, 20, 140, 100]: intersection 50 x 80 = 4000, union 2 x 8000 - 4000
    assert first["reference_boxes"] == [[40.0, 20.0, 140.0, 100.0]] and first["predicted_box"] == [90, 20, 190, 100]
    assert first["box_iou"] == pytest.approx(4000 / 12000) and first["reward"] == pytest.approx(1 + 1 / 3)
    assert second["predicted_box"] is None and second["box_iou"] is None
    assert first["weights"] == {"iou": 1.0, "format": 1.0} and first["prefill"].endswith("<think>")
    assert first["reference"] == "red square"  # the label stays the label; the box is beside it


def test_the_report_draws_reference_and_prediction_under_the_weighted_reward(tmp_path):
    page = write_report(tmp_path / "eval", grounding_result(), title="grounding", box_frame="pixels",
                        headline=["iou", "iou50"])
    text = page.read_text()
    assert "reward <b>1.333</b> = 1×iou 0.333 + 1×format 1.000 (also scored: iou50 0.000)" in text
    assert "reward None" not in text and "IoU 0.33</b> with the reference" in text
    assert "predicted box: none in the answer" in text and "reference box [40, 20, 140, 100] px" in text
    assert '<span class="prefill"' in text and "<i>prefill</i>Let me analyze this image." in text
    assert "0 of 2 held-out examples are also training examples" in text
    dom = _chromium(["--dump-dom", page.resolve().as_uri()], tmp_path).stdout
    # reference [40, 20, 140, 100] and prediction [90, 20, 190, 100] in percent of 200x160
    assert re.findall(r'<div class="box ref" data-ref="1" style="([^"]*)"', dom) == [
        "left:20.000%;top:12.500%;width:50.000%;height:50.000%"] * 2
    assert re.findall(r'<div class="box pred" data-pred="1" style="([^"]*)"><b>([^<]*)</b>', dom) == [
        ("left:45.000%;top:12.500%;width:50.000%;height:50.000%", "pred, IoU 0.33")]
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,1800", page.resolve().as_uri()], tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int64)
    for rgb in ((0, 166, 81), (230, 0, 126)):  # the reference's green and the prediction's magenta are on screen
        assert np.all(np.abs(pixels - rgb) < 12, axis=-1).sum() > 100, rgb


def test_an_sft_target_record_reads_as_one():
    rec = {"step": 3, "index": 0, "question": "q", "answer": "a", "response": "<answer>a</answer>", "images": [],
           "tool_calls": [], "stop": "eos"}
    assert "no reward (an SFT target)" in view.render_rollout(rec, folder=view.Path("."), page_dir=view.Path("."),
                                                                frame="")
