"""A static HTML page of a run's dumped rollouts: images, crop boxes, highlighted responses, rewards.

    python -m tools.view RUN_DIR [--out FILE] [--max N]

Reads RUN_DIR/rollouts/step_*.jsonl (written by engine/report/rollout_dump.py; RUN_DIR may also be the rollouts folder
itself) and writes one self-contained page (default RUN_DIR/rollouts/index.html). Images are referenced by paths
relative to the page, so it opens from disk in a browser, no server. With more than N records (default 32), N are
taken evenly spaced over the whole run (the first and last always in), so the page shows how answers changed.

Per rollout: step, reward (total and per component), advantage, stop reason, question and reference answer; the
original image, then every tool output image; the response text (HTML-escaped first) with `<think>`, `<answer>`,
`<tool_call>` and `<tool>` blocks highlighted; and a table of the tool calls with their errors.

Crop boxes on the original. A dumped call's "args" box is in the MODEL's frame, which the dump does not say. A
box is drawn (an absolutely-positioned div over the <img>, in percent of the image size) when it can be placed:
1. the call carries "box_pixels" (original-image pixels): drawn as is;
2. else the frame is known - the record's "box_frame", or else `[model] box_frame` of RUN_DIR/config.toml - and
   is "pixels" (drawn as is) or "norm1000" (scaled by the original's size). "resized" needs the processor's
   resized size, which the dump does not hold: not drawn;
3. otherwise (an empty box_frame means "the family's own", unknown here) the box is listed but not drawn.
Each image gets data-loaded="1" from a small inline script once it has loaded ("0" if it failed), which
tests/test_view.py reads back from headless Chromium. A record with a "target_box" (where the crop should look,
original pixels) gets it drawn dotted black, marked T, and its "crop_target_iou" shown in the header.

Learning signals: when RUN_DIR/metrics.jsonl holds RL steps (engine/algo/diagnostics.py), the page opens with a table of
them (at most --max rows, evenly spaced): the fraction of groups whose rewards differ, the crop-on-target rate,
and the mean |advantage|, entropy and clip fraction of the tool-call, answer and other tokens.

Exit status 2 (with the reason on stderr) when RUN_DIR has no dumped rollouts or a line is not a JSON object.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import quote

from PIL import Image

BOX_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")
TAGS = ("think", "answer", "tool_call", "tool")  # outer blocks first: inner ones are wrapped inside them

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
.rollout { background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 10px 14px; margin: 0 0 18px; }
.meta span { margin-right: 14px; } .pos { color: #197a1d; } .neg { color: #b3261e; }
.images { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin: 8px 0; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; }
.frame { position: relative; display: inline-block; line-height: 0; }
.frame img { display: block; max-width: 420px; max-height: 420px; image-rendering: pixelated; }
.box { position: absolute; box-sizing: border-box; border: 3px solid; }
.box b { position: absolute; left: 0; top: -16px; font-size: 11px; line-height: 14px; color: #fff; padding: 0 3px;
  white-space: nowrap; }
pre.response { white-space: pre-wrap; word-break: break-word; background: #f4f4f4; padding: 8px; }
.hl-think { background: #e8f0fe; } .hl-answer { background: #d9f5d9; font-weight: 600; }
.hl-tool_call, .hl-tool { background: #fff1c2; outline: 1px solid #e0b400; } .tag { color: #777; font-weight: 400; }
table { border-collapse: collapse; margin: 6px 0; } td, th { border: 1px solid #ddd; padding: 2px 8px; }
.error { color: #b3261e; } .target { border: 2px dotted #000; } .target b { background: #000; }
table.signals td { text-align: right; }
.ref { border-color: #00a651; } .ref b { background: #00a651; } .pred { border-color: #e6007e; }
.pred b { background: #e6007e; } .prefill { color: #555; background: #ececec; border: 1px dashed #999; }
.prefill i { font-style: normal; font-size: 11px; color: #777; margin-right: 4px; }
"""
SCRIPT = """
for (const img of document.querySelectorAll("img")) {
  const mark = () => { img.dataset.loaded = img.naturalWidth > 0 ? "1" : "0"; };
  if (img.complete) mark(); else { img.addEventListener("load", mark); img.addEventListener("error", mark); }
}
"""


class ViewError(ValueError):
    """What makes the page impossible to write; main() prints it and exits 2."""


def find_rollouts(run_dir: Path) -> tuple[Path, list[Path]]:
    """(the rollouts folder, its step_*.jsonl files in step order); RUN_DIR may be the rollouts folder itself."""
    folder = run_dir / "rollouts" if (run_dir / "rollouts").is_dir() else run_dir
    files = sorted(folder.glob("step_*.jsonl")) if folder.is_dir() else []
    if not files:
        raise ViewError(f"{run_dir}: no dumped rollouts (expected {run_dir}/rollouts/step_*.jsonl). "
                        + no_dump_reason(run_dir))
    return folder, files


def no_dump_reason(run_dir: Path) -> str:
    """Why a folder has no rollouts yet, and how to get them: a run dumps every train.sample_every RL steps, and
    the last step's when it ends (engine/trainer.py)."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return ("It is not a run folder either (no config.toml): pass the train.out_dir of a run of train.py, which "
                "dumps rollouts every train.sample_every RL steps and the last step's when it ends")
    try:
        every = tomllib.loads(path.read_text(encoding="utf-8")).get("train", {}).get("sample_every", 10)
    except (tomllib.TOMLDecodeError, AttributeError):
        every = "?"
    when = f"every {every} RL steps (train.sample_every {every})" if every else "at no step (train.sample_every 0)"
    return (f"This run dumps rollouts {when}, and the last step's when it ends: it has got to neither yet. To see "
            f"them sooner, set --train.sample_every N (a resume may change it: python train.py --resume {run_dir} "
            "--train.sample_every N)")


def read_records(files: list[Path]) -> list[dict]:
    records = []
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ViewError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(rec, dict):
                raise ViewError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    if not records:
        raise ViewError(f"{files[0].parent}: the step_*.jsonl files hold no rollouts")
    return records


def spread(items: list, n: int) -> list:
    """At most n items, evenly spaced, first and last included."""
    if n < 1 or len(items) <= n:
        return items if n >= 1 else []
    if n == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def config_box_frame(run_dir: Path) -> str:
    """`[model] box_frame` of the run's config.toml ("" when absent or "none": the family's own frame, unknown here)."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return ""
    try:
        model = tomllib.loads(path.read_text(encoding="utf-8")).get("model", {})
    except tomllib.TOMLDecodeError as exc:
        raise ViewError(f"{path}: not valid TOML ({exc})") from exc
    frame = str(model.get("box_frame", "")) if isinstance(model, dict) else ""
    return "" if frame.lower() in ("none", "null") else frame  # configlib writes None as "none"


def _box(value) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def pixel_box(call: dict, frame: str, size: tuple[int, int]) -> tuple[list[float] | None, str]:
    """(the call's box in original pixels, or None; a note saying where it came from or why it is not drawn)."""
    known = _box(call.get("box_pixels"))
    if known:
        return known, "box_pixels"
    box = _box((call.get("args") or {}).get("box")) if isinstance(call.get("args"), dict) else None
    if box is None:
        return None, ""
    if frame == "pixels":
        return box, "pixels"
    if frame == "norm1000":
        w, h = size
        return [box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000], "norm1000"
    return None, f"not drawn: box frame {frame or 'unknown'!r} cannot be mapped to pixels from the dump"


# (metrics.jsonl key, column heading) of the learning-signals table; a key missing from a run is left out
SIGNALS = (
    ("reward/accuracy", "accuracy"), ("groups/informative_fraction", "groups with differing rewards"),
    ("groups/hit_informative_fraction", "groups with differing crop hits"), ("tools/call_rate", "call rate"),
    ("tools/target_hit_rate", "crop on target"),
    *((f"train/tokens/{c}/{s}", f"{c} {label}") for c in ("tool", "answer", "text")
      for s, label in (("adv_abs", "|adv|"), ("entropy", "entropy"), ("clip_frac", "clip"))),
)


def read_signals(run_dir: Path) -> list[dict]:
    """The RL steps of RUN_DIR/metrics.jsonl that carry learning signals (unreadable lines are skipped: the page
    is a viewer, the run may still be writing)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "groups/informative_fraction" in row:
            rows.append(row)
    return rows


def render_signals(rows: list[dict], max_rows: int) -> str:
    if not rows:
        return ""
    columns = [(k, h) for k, h in SIGNALS if any(k in r for r in rows)]
    head = "<tr><th>step</th>" + "".join(f"<th>{_esc(h)}</th>" for _, h in columns) + "</tr>"
    body = "".join("<tr><td>" + _esc(r.get("step")) + "</td>"
                   + "".join(f"<td>{_num(r[k]) if k in r else ''}</td>" for k, _ in columns) + "</tr>"
                   for r in spread(rows, max_rows))
    return (f"<h2>Learning signals per RL step</h2><p>{len(rows)} RL steps in metrics.jsonl "
            f"(engine/algo/diagnostics.py says what each means)</p><table class=\"signals\">{head}{body}</table>")


def highlight(text: str) -> str:
    """The response, HTML-escaped, with complete tag blocks wrapped in <span class="hl-TAG"> (tags shown)."""
    out = html.escape(text, quote=False)
    for tag in TAGS:
        open_, close = f"&lt;{tag}&gt;", f"&lt;/{tag}&gt;"
        # inner blocks may not cross an inserted span: [^<>] keeps the markup well nested
        body = "(.*?)" if tag in ("think", "answer") else "([^<>]*?)"
        out = re.sub(re.escape(open_) + body + re.escape(close),
                     lambda m, t=tag, o=open_, c=close: f'<span class="hl-{t}"><b class="tag">{o}</b>{m.group(1)}'
                                                        f'<b class="tag">{c}</b></span>', out, flags=re.DOTALL)
    # a tag left unclosed (a truncated answer) is still marked
    return re.sub(r'(?<!<b class="tag">)&lt;/?(?:think|answer|tool_call|tool)&gt;', r'<b class="tag">\g<0></b>', out)


def _esc(value) -> str:
    return html.escape(str(value))


def _num(value, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _esc(value)


def _img(src: str, alt: str, overlays: str = "") -> str:
    return f'<div class="frame"><img src="{_esc(src)}" alt="{_esc(alt)}" title="{_esc(alt)}">{overlays}</div>'


def render_calls(calls: list[dict], frame: str, size: tuple[int, int] | None) -> tuple[str, str]:
    """(box overlays for the original image, the table of tool calls). Boxes are clipped to the image and
    placed in percent of its size; a failed call's box is dashed."""
    overlays, rows = [], []
    for k, call in enumerate(calls, 1):
        box, note = pixel_box(call, frame, size) if size else (None, "")
        if box is not None:
            shown = f"[{', '.join(f'{v:.0f}' for v in box)}] px"
            x1, y1, x2, y2 = max(box[0], 0), max(box[1], 0), min(box[2], size[0]), min(box[3], size[1])
            if x1 >= x2 or y1 >= y2:
                box, note = None, f"not drawn: {shown} is outside the {size[0]}x{size[1]} image"
        if box is not None:
            color = BOX_COLORS[(k - 1) % len(BOX_COLORS)]
            dash = "" if call.get("ok") else ";border-style:dashed"
            l, t, w, h = 100 * x1 / size[0], 100 * y1 / size[1], 100 * (x2 - x1) / size[0], 100 * (y2 - y1) / size[1]
            overlays.append(f'<div class="box" data-call="{k}" style="left:{l:.3f}%;top:{t:.3f}%;width:{w:.3f}%;'
                            f'height:{h:.3f}%;border-color:{color}{dash}"><b style="background:{color}">{k}</b></div>')
            note = f"drawn ({note}): {shown}"
        error = call.get("error") or ""
        rows.append(f"<tr><td>{k}</td><td>{_esc(call.get('name', ''))}</td>"
                    f"<td><code>{_esc(json.dumps(call.get('args', {})))}</code></td>"
                    f"<td>{'ok' if call.get('ok') else 'failed'}</td>"
                    f'<td class="error">{_esc(error)}</td><td>{_esc(note)}</td></tr>')
    if not rows:
        return "", "<p>no tool calls</p>"
    head = "<tr><th>#</th><th>tool</th><th>args (model frame)</th><th>result</th><th>error</th><th>box</th></tr>"
    return "".join(overlays), f'<table class="calls">{head}{"".join(rows)}</table>'


def _overlay(box: list[float], size: tuple[int, int], cls: str, label: str, data: str) -> str:
    """A box (original pixels) drawn over the image, clipped to it, in percent of its size."""
    x1, y1 = max(box[0], 0), max(box[1], 0)
    x2, y2 = min(box[2], size[0]), min(box[3], size[1])
    if x1 >= x2 or y1 >= y2:
        return ""
    l, t, w, h = 100 * x1 / size[0], 100 * y1 / size[1], 100 * (x2 - x1) / size[0], 100 * (y2 - y1) / size[1]
    return (f'<div class="box {cls}" {data} style="left:{l:.3f}%;top:{t:.3f}%;width:{w:.3f}%;height:{h:.3f}%">'
            f"<b>{_esc(label)}</b></div>")


def render_grounding(rec: dict, size: tuple[int, int] | None) -> tuple[str, str]:
    """(overlays of the reference boxes, green "ref", and the predicted box, magenta "pred", on the original; the
    header's note: the IoU of the prediction, or why none is drawn). Both are original-image pixels."""
    refs = [b for b in map(_box, rec.get("reference_boxes") or []) if b is not None]
    pred = _box(rec.get("predicted_box"))
    if not refs and pred is None:
        return "", ""
    overlays = "".join(_overlay(b, size, "ref", "ref", 'data-ref="1"') for b in refs) if size else ""
    iou = rec.get("box_iou")
    if pred is None:
        return overlays, '<span class="iou">predicted box: none in the answer</span>'
    shown = "[" + ", ".join(f"{v:.0f}" for v in pred) + "]"
    label = f"pred, IoU {iou:.2f}" if isinstance(iou, (int, float)) else "pred"
    overlays += _overlay(pred, size, "pred", label, 'data-pred="1"') if size else ""
    return overlays, (f'<span class="iou">predicted box {shown} px (magenta): <b>IoU {_num(iou, "{:.2f}")}</b> with '
                      "the reference</span>")


def _ref_boxes(rec: dict) -> str:
    boxes = [b for b in map(_box, rec.get("reference_boxes") or []) if b is not None]
    shown = "; ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in boxes)
    return f' <span class="iou">(reference box {shown} px, drawn green)</span>' if boxes else ""


def reward_line(rec: dict) -> str:
    """The weighted reward and each part: 'reward 1.450 = 1×iou 0.450 + 1×format 1.000 (also scored: iou50 0)'."""
    reward, parts, weights = rec.get("reward"), rec.get("parts") or {}, rec.get("weights")
    if reward is None and not parts:
        return "<span>no reward (an SFT target)</span>"
    if not isinstance(weights, dict):
        terms = ", ".join(f"{_esc(n)} {_num(v)}" for n, v in parts.items())
        return f"<span>reward <b>{_num(reward)}</b> ({terms})</span>"
    terms = " + ".join(f"{w:g}×{_esc(n)} {_num(parts.get(n))}" for n, w in weights.items())
    extra = ", ".join(f"{_esc(n)} {_num(v)}" for n, v in parts.items() if n not in weights)
    return (f"<span>reward <b>{_num(reward)}</b> = {terms}" + (f" (also scored: {extra})" if extra else "")
            + "</span>")


def render_rollout(rec: dict, *, folder: Path, page_dir: Path, frame: str) -> str:
    images = [p for p in rec.get("images", []) if isinstance(p, str)]
    size = None
    if images and (folder / images[0]).is_file():
        with Image.open(folder / images[0]) as im:
            size = im.size
    calls = [c for c in rec.get("tool_calls", []) if isinstance(c, dict)]
    overlays, calls_table = render_calls(calls, rec.get("box_frame") or frame, size)
    target = _box(rec.get("target_box"))
    if target is not None and size:
        l, t = 100 * target[0] / size[0], 100 * target[1] / size[1]
        w, h = 100 * (target[2] - target[0]) / size[0], 100 * (target[3] - target[1]) / size[1]
        overlays += (f'<div class="box target" data-target="1" style="left:{l:.3f}%;top:{t:.3f}%;width:{w:.3f}%;'
                     f'height:{h:.3f}%"><b>T</b></div>')
    boxes, iou_note = render_grounding(rec, size)
    overlays += boxes
    hit = rec.get("crop_target_iou")
    hit_note = f"<span>crop IoU with target {_num(hit, '{:.2f}')}</span>" if hit is not None else ""
    figures = []
    for i, path in enumerate(images):
        src = quote(Path(os.path.relpath(folder / path, page_dir)).as_posix())
        caption = "original" if i == 0 else f"tool image {i}"
        figures.append(f"<figure>{_img(src, caption, overlays if i == 0 else '')}"
                       f"<figcaption>{caption}</figcaption></figure>")
    parts = "".join(f"<tr><td>{_esc(n)}</td><td>{_num(v)}</td></tr>" for n, v in (rec.get("parts") or {}).items())
    prefill = (f'<span class="prefill" title="data.prefill: placed by the prompt, not written by the model">'
               f'<i>prefill</i>{_esc(rec["prefill"])}</span>' if rec.get("prefill") else "")
    adv = rec.get("advantage")
    sign = ("pos" if adv > 0 else "neg" if adv < 0 else "") if isinstance(adv, (int, float)) else ""
    return (f'<section class="rollout" data-step="{_esc(rec.get("step"))}">'
            f'<div class="meta"><span><b>step {_esc(rec.get("step"))}</b> #{_esc(rec.get("index"))}</span>'
            f'{reward_line(rec)}'
            + (f'<span class="{sign}">advantage {_num(adv, "{:+.3f}")}</span>' if adv is not None else "") +
            f'<span>stop {_esc(rec.get("stop", ""))}</span>{hit_note}{iou_note}</div>'
            f'<p><b>Q:</b> {_esc(rec.get("question", ""))}<br><b>reference:</b> {_esc(rec.get("answer", ""))}'
            f'{_ref_boxes(rec)}</p>'
            f'<div class="images">{"".join(figures)}</div>'
            f'<pre class="response">{prefill}{highlight(str(rec.get("response", "")))}</pre>'
            f'<table class="parts"><tr><th>reward part</th><th>value</th></tr>{parts}</table>{calls_table}</section>')


def render_page(records: list[dict], *, folder: Path, page_dir: Path, frame: str, title: str,
                signals: str = "") -> str:
    body = "\n".join(render_rollout(r, folder=folder, page_dir=page_dir, frame=frame) for r in records)
    dumped = sorted({str(r["box_frame"]) for r in records if r.get("box_frame")})
    if dumped:
        note = f"box frame (from the dump): {', '.join(dumped)}"
    else:
        note = f"box frame from config: {frame!r}" if frame else "box frame: unknown (only box_pixels are drawn)"
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>'
            f'{signals}<p>{len(records)} rollouts; {_esc(note)}</p>\n{body}\n<script>{SCRIPT}</script></body></html>\n')


def write_view(run_dir, out=None, max_items: int = 32) -> Path:
    run_dir = Path(run_dir)
    folder, files = find_rollouts(run_dir)
    records = read_records(files)
    records.sort(key=lambda r: tuple(r.get(k) if isinstance(r.get(k), int) else -1 for k in ("step", "index")))
    out = Path(out) if out else folder / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_page(spread(records, max_items), folder=folder, page_dir=out.parent,
                       frame=config_box_frame(folder.parent), title=f"rollouts of {run_dir}",
                       signals=render_signals(read_signals(folder.parent), max_items))
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.view", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="run folder (holding rollouts/step_*.jsonl) or the rollouts folder")
    parser.add_argument("--out", help="page to write (default RUN_DIR/rollouts/index.html)")
    parser.add_argument("--max", type=int, default=32, help="most rollouts shown, evenly spaced over the run")
    args = parser.parse_args(argv)
    if args.max < 1:
        parser.error(f"--max must be >= 1, got {args.max}")
    try:
        path = write_view(args.run_dir, args.out, args.max)
    except ViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
