"""The evaluation's readable record: metrics.json, predictions.jsonl, the images and crops, and index.html.

    out = write_report("runs/demo/eval", result, title="...", box_frame="resized", run_dir=Path("runs/demo"))

out/predictions.jsonl has one line per held-out example: origin, question, reference, answer (extracted),
response, stop, every reward part, tool calls (name, args in the model's frame, ok, error, box_pixels) and
"images" (paths relative to out/: the original, then each tool output). out/index.html opens from disk with no
network: a bar chart of the mean of every metric, a histogram of each metric's per-example values (rates on [0, 1]),
the curves of the run the model came from (a held-out curve per headline metric; reward, accuracy, KL, response
length, tool-call rate, losses from its metrics.jsonl), the count of held-out examples the run trained on, then the
examples drawn by tools/view.py (crop boxes, reference and predicted boxes with their IoU, the crops, the prefill
and the highlighted response, the weighted reward and each part). Plots are inline SVG (tools/plots.py); images are
files beside the page.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from tools import view
from tools.plots import bar_chart, histogram, line_chart

# (metrics.jsonl key, plot title, a rate drawn on [0, 1]); the held-out curves come first, one per headline metric
CURVES = [("reward/total", "reward (train)", False), ("reward/accuracy", "accuracy (train samples)", True),
          ("train/kl", "KL to the reference", False), ("length/response_mean", "response length (tokens)", False),
          ("tools/call_rate", "tool-call rate", True), ("train/loss", "RL loss", False), ("sft/loss", "SFT loss", False)]
NOT_PLOTTED = {"num_examples", "eval_overlaps_train"}  # counts, said in the table, not means of a metric


def curve_specs(headline: list[str]) -> list[tuple[str, str, bool]]:
    """The curves of an evaluation report: a held-out curve per headline metric (eval/<name>, logged after each
    stage and every train.eval_every steps), then the training curves."""
    return [(f"eval/{name}", f"held-out {name}", True) for name in headline] + CURVES


def read_curves(run_dir: Path, specs: list[tuple[str, str, bool]] | None = None) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} for the curves (`specs`, default the training CURVES and held-out accuracy)
    a run's metrics.jsonl holds (others are left out)."""
    path = run_dir / "metrics.jsonl"
    curves: dict[str, list[tuple[float, float]]] = {}
    if not path.is_file():
        return curves
    wanted = {key for key, _, _ in (specs or curve_specs(["accuracy"]))}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            continue
        for key in wanted & row.keys():
            if isinstance(row[key], (int, float)):
                curves.setdefault(key, []).append((row["step"], float(row[key])))
    return curves


def metric_names(records: list[dict]) -> list[str]:
    """The numeric per-example fields: the weighted reward and its parts (what a histogram is drawn for)."""
    skip = {"num_tool_calls", "box_iou"}
    return [k for k, v in records[0].items() if k not in skip and isinstance(v, (int, float))
            and not isinstance(v, bool)] if records else []


def save_images(out: Path, index: int, trajectory) -> list[str]:
    paths = []
    for k, image in enumerate(trajectory.images):
        name = f"images/{index:05d}_{k}.png"
        image.save(out / name)
        paths.append(name)
    return paths


def write_predictions(out: Path, records: list[dict], trajectories: list) -> list[dict]:
    """predictions.jsonl, with each example's images saved under out/images/ (when the trajectories are kept)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, rec in enumerate(records):
            row = {**rec, "images": save_images(out, i, trajectories[i]) if i < len(trajectories) else []}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows.append(row)
    return rows


def _example_view(i: int, row: dict, box_frame: str) -> dict:
    """A predictions row in the shape tools/view.py draws (its "answer" is the reference)."""
    parts = {k: row[k] for k in metric_names([row]) if k != "reward"}
    keep = ("prefill", "weights", "reference_boxes", "predicted_box", "box_iou")
    return {"step": "eval", "index": i, "question": row["question"], "answer": row["reference"],
            "response": row["response"], "reward": row.get("reward"), "parts": parts, "stop": row.get("stop", ""),
            "images": row["images"], "tool_calls": row["tool_calls"], "box_frame": box_frame,
            **{k: row[k] for k in keep if k in row}}


def render_report(rows: list[dict], metrics: dict, *, out: Path, title: str, subtitle: str, box_frame: str,
                  curves: dict, max_examples: int, headline: list[str] = ("accuracy",)) -> str:
    esc = html.escape
    names = metric_names(rows)
    means = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in NOT_PLOTTED
             and math.isfinite(v)}
    plots = [bar_chart(means)] + [histogram(n, [r[n] for r in rows], rate=n != "reward") for n in names]
    specs = curve_specs(list(headline))
    curve_html = "".join(line_chart(label, curves[k], rate=rate) for k, label, rate in specs if k in curves)
    shown = view.spread(list(enumerate(rows)), max_examples)
    examples = "\n".join(view.render_rollout(_example_view(i, r, box_frame), folder=out, page_dir=out,
                                             frame=box_frame) for i, r in shown)
    table = "".join(f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>" for k, v in means.items())
    overlap = metrics.get("eval_overlaps_train")
    said = ("" if overlap is None else f'<p class="{"error" if overlap else ""}">{overlap} of '
            f'{metrics.get("num_examples", len(rows))} held-out examples are also training examples of the run '
            f'(same image and question){": their scores measure memory" if overlap else ""}.</p>')
    training = (f'<h2>Training curves</h2><div class="plots">{curve_html}</div>' if curve_html else "")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{view.STYLE} .plots {{ display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }}'
            f'</style></head><body><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>'
            f'<table class="metrics"><tr><th>metric</th><th>mean over {metrics.get("num_examples", len(rows))} '
            f'examples</th></tr>{table}</table>{said}'
            f'<h2>Metrics</h2><div class="plots">{"".join(plots)}</div>{training}'
            f'<h2>Examples ({len(shown)} of {len(rows)}; all in predictions.jsonl)</h2>\n{examples}\n'
            f'<script>{view.SCRIPT}</script></body></html>\n')


def write_report(out: str | Path, result, *, title: str, subtitle: str = "", box_frame: str = "",
                 run_dir: Path | None = None, max_examples: int = 50, headline: list[str] = ("accuracy",)) -> Path:
    """Write metrics.json, predictions.jsonl, images/ and index.html into `out`; returns the page's path.
    `headline`: the metrics (eval.metrics) whose held-out curves the run's metrics.jsonl gives."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    rows = write_predictions(out, result.records, result.trajectories)
    curves = read_curves(run_dir, curve_specs(list(headline))) if run_dir else {}
    page = render_report(rows, result.metrics, out=out, title=title, subtitle=subtitle, box_frame=box_frame,
                         curves=curves, max_examples=max_examples, headline=headline)
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
