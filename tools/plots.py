"""Inline SVG plots for static HTML pages: no plotting library, no network, nothing to load.

    line_chart("reward/total", [(1, 0.2), (2, 0.35), ...])          # a training curve
    line_chart("held-out accuracy", points, rate=True)               # a rate: the y axis is [0, 1]
    histogram("accuracy", [1.0, 0.0, 1.0, 0.5], rate=True)           # one metric's per-example values
    bar_chart({"accuracy": 0.81, "format": 0.97})                     # several metrics' means, one labelled row each

Each returns one `<svg>` element (with a <title> naming the plot, and its y range as data-y-lo / data-y-hi, which
the axis labels also show) to paste into a page; every text is escaped. Made to be read at a glance: a rate is drawn
on [0, 1] whatever its values; a flat line sits inside a band around its value, not on an axis of 1e-12; a
histogram whose values are all equal is one bar labelled with that value and the count; every bar carries its
number. Non-finite values are left out (a NaN loss does not break the page).
"""

from __future__ import annotations

import html
import math

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 360, 180, 52, 10, 24, 26
COLOR = "#4363d8"


def _esc(text) -> str:
    return html.escape(str(text))


def _fmt(v: float) -> str:
    """Short enough for the axis margin: 3 significant digits, a small value as 5.5e-04."""
    return f"{v:.1e}" if 0 < abs(v) < 1e-2 else f"{v:.3g}"


def _frame(title: str, y_lo: float, y_hi: float, x_lo: str, x_hi: str, body: str, kind: str,
           height: int = H) -> str:
    inner_h = height - PAD_T - PAD_B
    return (f'<svg class="plot" data-kind="{kind}" data-title="{_esc(title)}" data-y-lo="{_fmt(y_lo)}" '
            f'data-y-hi="{_fmt(y_hi)}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
            f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="11">'
            f'<title>{_esc(title)}</title><rect width="{W}" height="{height}" fill="#fff"/>'
            f'<text x="{PAD_L}" y="14" font-weight="600">{_esc(title)}</text>'
            f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + inner_h}" stroke="#999"/>'
            f'<line x1="{PAD_L}" y1="{PAD_T + inner_h}" x2="{W - PAD_R}" y2="{PAD_T + inner_h}" stroke="#999"/>'
            f'<text class="y-hi" x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end">{_fmt(y_hi)}</text>'
            f'<text class="y-lo" x="{PAD_L - 4}" y="{PAD_T + inner_h}" text-anchor="end">{_fmt(y_lo)}</text>'
            f'<text x="{PAD_L}" y="{height - 8}">{_esc(x_lo)}</text>'
            f'<text x="{W - PAD_R}" y="{height - 8}" text-anchor="end">{_esc(x_hi)}</text>{body}</svg>')


def _range(values: list[float], rate: bool = False) -> tuple[float, float]:
    """The axis for `values`: [0, 1] for a rate; else their span, a flat one widened to a band around it."""
    if rate:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if lo == hi:  # a flat line sits mid-band: ±0.5, or ±10 % of a large value
        half = max(abs(lo) * 0.1, 0.5)
        lo, hi = lo - half, hi + half
    return lo, hi


def line_chart(title: str, points: list[tuple[float, float]], rate: bool = False) -> str:
    """y against x (e.g. a metric against the step); points with a non-finite value are skipped. `rate`: the
    values are fractions, drawn on [0, 1]."""
    pts = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return _frame(title, 0, 1, "", "", f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no values</text>',
                      "line")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    (x_lo, x_hi), (y_lo, y_hi) = _range(xs), _range(ys, rate and 0.0 <= min(ys) and max(ys) <= 1.0)
    inner_w, inner_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    sx = lambda x: PAD_L + inner_w * (x - x_lo) / (x_hi - x_lo)  # noqa: E731
    sy = lambda y: PAD_T + inner_h * (1 - (y - y_lo) / (y_hi - y_lo))  # noqa: E731
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{COLOR}"/>' for x, y in pts) \
        if len(pts) <= 60 else ""
    last = f'<text x="{sx(xs[-1]) - 3:.1f}" y="{sy(ys[-1]) - 5:.1f}" text-anchor="end">{_fmt(ys[-1])}</text>'
    body = f'<polyline fill="none" stroke="{COLOR}" stroke-width="1.5" points="{path}"/>{dots}{last}'
    return _frame(title, y_lo, y_hi, _fmt(min(xs)), _fmt(max(xs)), body, "line")  # the axis the points were placed on


def _columns(title: str, labels: list[str], heights: list[float], x_lo: str, x_hi: str) -> str:
    """Vertical bars of counts, each with its count above it (a histogram)."""
    top = max(heights, default=0.0) or 1.0  # no bars at all: an axis of 0..1, not 0..1e-12
    inner_w, inner_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = inner_w / max(len(heights), 1)
    body = []
    for i, (label, h) in enumerate(zip(labels, heights)):
        bar_h = inner_h * max(h, 0.0) / top
        x, y = PAD_L + i * step + 1, PAD_T + inner_h - bar_h
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{bar_h:.1f}" '
                    f'fill="{COLOR}"><title>{_esc(label)}: {_fmt(h)}</title></rect>')
        if h:
            body.append(f'<text class="bar-label" x="{x + step / 2 - 1:.1f}" y="{max(y - 3, PAD_T + 9):.1f}" '
                        f'text-anchor="middle">{_fmt(h)}</text>')
    return _frame(title, 0.0, top, x_lo, x_hi, "".join(body), "histogram")


def histogram(title: str, values: list[float], bins: int = 10, rate: bool = False) -> str:
    """How many examples scored in each of `bins` equal ranges: between the lowest and the highest value, or over
    [0, 1] for a `rate`. All values equal: one bar, labelled with the value and the count."""
    vals = [float(v) for v in values if math.isfinite(v)]
    if not vals:
        return _columns(title, [], [], "", "")
    lo, hi = min(vals), max(vals)
    if lo == hi:
        return _columns(title, [_fmt(lo)], [float(len(vals))], f"every example: {_fmt(lo)}", f"{len(vals)} examples")
    if rate and 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    labels = [f"{_fmt(lo + i * width)}-{_fmt(lo + (i + 1) * width)}" for i in range(bins)]
    return _columns(title, labels, [float(c) for c in counts], _fmt(lo), _fmt(hi))


def bar_chart(values: dict[str, float], title: str = "mean per metric") -> str:
    """One horizontal bar per metric, each labelled with its name and value; the axis is [0, 1] when every value is a
    fraction, else [min(0, lowest), highest]."""
    names = [n for n in values if math.isfinite(values[n])]
    vals = [float(values[n]) for n in names]
    lo = min(0.0, min(vals, default=0.0))
    hi = 1.0 if all(0.0 <= v <= 1.0 for v in vals) else max(max(vals, default=1.0), lo + 1e-9)
    row, left = 18, 130  # each row's height, and where the bars start (names to their left)
    height = PAD_T + PAD_B + row * max(len(names), 1)
    span = W - PAD_R - left - 40  # room for the value after the longest bar
    body = []
    for i, (name, v) in enumerate(zip(names, vals)):
        y = PAD_T + i * row
        x0 = left + span * (0 - lo) / (hi - lo)
        x1 = left + span * (v - lo) / (hi - lo)
        body.append(f'<text class="bar-name" x="{left - 4}" y="{y + 12}" text-anchor="end">{_esc(name)}</text>'
                    f'<rect x="{min(x0, x1):.1f}" y="{y + 2}" width="{max(abs(x1 - x0), 1):.1f}" height="{row - 4}" '
                    f'fill="{COLOR}"><title>{_esc(name)}: {_fmt(v)}</title></rect>'
                    f'<text class="bar-label" x="{max(x0, x1) + 4:.1f}" y="{y + 12}">{_fmt(v)}</text>')
    axis = (f'<line x1="{left}" y1="{PAD_T}" x2="{left}" y2="{height - PAD_B}" stroke="#999"/>'
            f'<text class="x-lo" x="{left}" y="{height - 8}" text-anchor="middle">{_fmt(lo)}</text>'
            f'<text class="x-hi" x="{left + span}" y="{height - 8}" text-anchor="middle">{_fmt(hi)}</text>')
    return (f'<svg class="plot" data-kind="bars" data-title="{_esc(title)}" data-x-lo="{_fmt(lo)}" '
            f'data-x-hi="{_fmt(hi)}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
            f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="11"><title>{_esc(title)}</title>'
            f'<rect width="{W}" height="{height}" fill="#fff"/><text x="{PAD_L}" y="14" font-weight="600">'
            f'{_esc(title)}</text>{axis}{"".join(body)}</svg>')
