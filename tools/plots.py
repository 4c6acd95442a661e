"""Inline SVG plots for static HTML pages: no plotting library, no network, nothing to load.

    line_chart("reward/total", [(1, 0.2), (2, 0.35), ...])   # a training curve
    histogram("accuracy", [1.0, 0.0, 1.0, 0.5])               # one metric's per-example values
    bar_chart({"accuracy": 0.81, "format": 0.97})              # several metrics' means

Each returns one `<svg>` element (with a <title> naming the plot) to paste into a page; every text is escaped.
Non-finite values are left out of a curve (a NaN loss does not break the page).
"""

from __future__ import annotations

import html
import math

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 360, 180, 46, 10, 24, 26
COLOR = "#4363d8"


def _esc(text) -> str:
    return html.escape(str(text))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _frame(title: str, y_lo: float, y_hi: float, x_lo: str, x_hi: str, body: str, kind: str) -> str:
    inner_h = H - PAD_T - PAD_B
    return (f'<svg class="plot" data-kind="{kind}" data-title="{_esc(title)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">'
            f'<title>{_esc(title)}</title><rect width="{W}" height="{H}" fill="#fff"/>'
            f'<text x="{PAD_L}" y="14" font-weight="600">{_esc(title)}</text>'
            f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + inner_h}" stroke="#999"/>'
            f'<line x1="{PAD_L}" y1="{PAD_T + inner_h}" x2="{W - PAD_R}" y2="{PAD_T + inner_h}" stroke="#999"/>'
            f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end">{_fmt(y_hi)}</text>'
            f'<text x="{PAD_L - 4}" y="{PAD_T + inner_h}" text-anchor="end">{_fmt(y_lo)}</text>'
            f'<text x="{PAD_L}" y="{H - 8}">{_esc(x_lo)}</text>'
            f'<text x="{W - PAD_R}" y="{H - 8}" text-anchor="end">{_esc(x_hi)}</text>{body}</svg>')


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:  # a flat line still gets a visible band
        lo, hi = lo - 0.5 if lo else -0.5, hi + 0.5 if hi else 0.5
    return lo, hi


def line_chart(title: str, points: list[tuple[float, float]]) -> str:
    """y against x (e.g. a metric against the step); points with a non-finite value are skipped."""
    pts = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return _frame(title, 0, 1, "", "", f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no values</text>',
                      "line")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    (x_lo, x_hi), (y_lo, y_hi) = _range(xs), _range(ys)
    inner_w, inner_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    sx = lambda x: PAD_L + inner_w * (x - x_lo) / (x_hi - x_lo)  # noqa: E731
    sy = lambda y: PAD_T + inner_h * (1 - (y - y_lo) / (y_hi - y_lo))  # noqa: E731
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{COLOR}"/>' for x, y in pts) \
        if len(pts) <= 60 else ""
    body = f'<polyline fill="none" stroke="{COLOR}" stroke-width="1.5" points="{path}"/>{dots}'
    return _frame(title, y_lo, y_hi, _fmt(min(xs)), _fmt(max(xs)), body, "line")  # the axis the points were placed on


def _bars(title: str, labels: list[str], heights: list[float], kind: str, x_lo: str = "", x_hi: str = "") -> str:
    top = max(max(heights, default=0.0), 1e-12)
    inner_w, inner_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = inner_w / max(len(heights), 1)
    body = []
    for i, (label, h) in enumerate(zip(labels, heights)):
        bar_h = inner_h * max(h, 0.0) / top  # a negative mean draws no bar; its label says the value
        x, y = PAD_L + i * step + 1, PAD_T + inner_h - bar_h
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{bar_h:.1f}" '
                    f'fill="{COLOR}"><title>{_esc(label)}: {_fmt(h)}</title></rect>')
        if kind == "bars":
            body.append(f'<text x="{x + step / 2 - 1:.1f}" y="{max(y - 3, PAD_T + 9):.1f}" text-anchor="middle">'
                        f'{_fmt(h)}</text>')
    return _frame(title, 0.0, top, x_lo, x_hi, "".join(body), kind)


def histogram(title: str, values: list[float], bins: int = 10) -> str:
    """How many examples scored in each of `bins` equal ranges between the lowest and the highest value."""
    vals = [float(v) for v in values if math.isfinite(v)]
    if not vals:
        return _bars(title, [], [], "histogram")
    lo, hi = min(vals), max(vals)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    labels = [f"{_fmt(lo + i * width)}-{_fmt(lo + (i + 1) * width)}" for i in range(bins)]
    return _bars(title, labels, [float(c) for c in counts], "histogram", _fmt(lo), _fmt(hi))


def bar_chart(values: dict[str, float], title: str = "mean per metric") -> str:
    """One bar per metric, labelled with its value (and its name in the bar's tooltip)."""
    names = list(values)
    return _bars(title, names, [float(values[n]) for n in names], "bars", names[0] if names else "",
                 names[-1] if len(names) > 1 else "")
