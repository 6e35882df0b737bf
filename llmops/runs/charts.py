"""The report's charts: inline SVG line charts with readable axes, drawn without a plotting library.

A module of its own because laying out a chart (nice ticks, human numbers,
margins sized from the labels, legends and restart labels that collide with
nothing) is a concern apart from what the report says about a run
(:mod:`llmops.runs.report`), and is tested apart (``tests/runs/test_report.py``
checks the layout in a real browser).

Nothing is measured in a browser when a chart is drawn: label widths are
estimated from DejaVu Sans's advance widths (the widest of the common
sans-serif defaults; Liberation, Arial and Helvetica are about 10% narrower),
rounded up, so an estimate errs towards more room. Every chart is an SVG with
a ``viewBox`` and ``width="100%"``: it scales to the page, text included.

Layout of a line chart, top to bottom: the legend (a row of swatches, wrapped
when it is wider than the chart), a band for restart labels (only when there
are restarts), the plot (gridlines, data, restart lines, re-run steps shaded),
x tick labels, the x axis title. Left of the plot: the y axis title (rotated)
and the y tick labels, whose widest one sizes the margin.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 900  # viewBox units; the chart scales to the page's width (750-1150 px in 800-1400 px windows)
FONT = 14  # tick labels, legend, axis titles: 11.7 px in an 800 px window, 18 px in a 1400 px one
SMALL = 13  # restart labels
# What a browser's text box spans above and below the baseline, in em: DejaVu Sans's 0.93 and 0.24 (Liberation
# Sans, Chromium's usual sans-serif, has less), with room for the browser rounding the box to whole pixels.
ASCENT, DESCENT = 0.95, 0.25
PLOT_HEIGHT = 190
MINUS = "\u2212"

# DejaVu Sans advance widths (em), grouped; anything else counts as 0.72.
_ADVANCE = {c: w for chars, w in (
    ("ijl'", 0.28), ("IJ", 0.3), (" .,\u00b7", 0.32), (":;/", 0.34), ("f", 0.36), ("-", 0.37), ("t()[]", 0.4),
    ("!r", 0.42), ("\"", 0.46), ("\u2013_*", 0.5), ("s", 0.53), ("z?", 0.54), ("c", 0.55), ("LF", 0.58),
    ("kvxy", 0.6), ("PaeoTY", 0.62), ("hnuE", 0.64), ("bdgpqS0123456789", 0.64), ("K", 0.66), ("AV", 0.69),
    ("BRXZC", 0.7), ("U", 0.74), ("HN", 0.75), ("D", 0.77), ("G&", 0.79), ("OQ", 0.8), ("w", 0.82),
    ("+\u2212=<>#", 0.84), ("M", 0.87), ("%", 0.95), ("m", 0.98), ("W", 1.0)) for c in chars}


def text_width(text: str, size: float = FONT) -> float:
    """An upper estimate of the width of `text` at font size `size` (see the module docstring)."""
    return 1.04 * size * sum(_ADVANCE.get(c, 0.72) for c in text)


# ---- numbers ---------------------------------------------------------------------------------------

_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def _sci(v: float, decimals: int) -> str:
    mantissa, exponent = f"{abs(v):.{max(0, decimals)}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{MINUS if v < 0 else ''}{mantissa}e{int(exponent)}".replace("e-", f"e{MINUS}")


def human(v: float | None, digits: int = 3) -> str:
    """One number for a person: 46000 -> 46k, 1234567 -> 1.23M, 0.000312 -> 3.12e-4, 6.9409 -> 6.94.

    `digits` significant digits, trailing zeros dropped; "-" for a missing or non-finite value.
    """
    if v is None or not math.isfinite(v):
        return "-"
    if v == 0:
        return "0"
    v = float(f"{v:.{digits}g}")  # rounded first, so that 999.96 becomes 1k, not 1000
    a, sign = abs(v), (MINUS if v < 0 else "")
    if a < 1e-3:
        return _sci(v, digits - 1)
    unit, suffix = next(((u, s) for u, s in _UNITS if a >= u), (1.0, ""))
    x = a / unit
    decimals = max(0, digits - 1 - math.floor(math.log10(x)))
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{sign}{text}{suffix}"


def duration(seconds: float | None) -> str:
    """A span of time for a person: 0.4 s, 12 s, 2 min 41 s, 1 h 05 min."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` evenly spaced round values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:  # a flat line: a range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = (0.0, 1.0) if lo == 0 else (lo - pad, hi + pad)
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    # The round step nearest the raw one (geometrically), as d3's ticks choose it: between count / 1.6 and
    # count * 1.6 ticks, more when the range is widened to whole steps.
    step = next(m * magnitude for m, limit in ((10, 50 ** 0.5), (5, 10 ** 0.5), (2, 2 ** 0.5), (1, 0))
                if raw / magnitude >= limit)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels for evenly spaced ticks, all with the same unit and decimals: 0, 10k, 20k; 0.5, 1.0; 1e-4, 2e-4."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(ticks[0]) or 1.0
    top = max(abs(t) for t in ticks)
    if top == 0:
        return ["0" for _ in ticks]
    if top < 1e-3:
        return ["0" if t == 0 else _sci(t, math.floor(math.log10(abs(t))) - math.floor(math.log10(step)))
                for t in ticks]
    unit, suffix = next(((u, s) for u, s in _UNITS if top >= u), (1.0, ""))
    decimals = max(0, -math.floor(math.log10(step / unit) + 1e-9))
    out = []
    for t in ticks:
        text = f"{abs(t) / unit:.{decimals}f}"
        out.append("0" if t == 0 else f"{MINUS if t < 0 else ''}{text}{suffix}")
    return out


# ---- line charts -----------------------------------------------------------------------------------

@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    colour: str
    dashed: bool = False
    markers: bool = False  # drawn where there are at most MARKERS points
    hollow: bool = False  # ringed markers, which show round a later series' marker on the same value


@dataclass
class Mark:
    """A vertical line at step `x` (a restart), with a label above the plot and the steps it lost shaded."""

    x: float
    label: str
    tooltip: str = ""
    lost: tuple[float, float] | None = None  # steps run, then run again after this restart


LOST_FILL = "#eb5757"


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: float = FONT, fill: str = "#333",
          extra: str = "") -> str:
    """A label whose baseline is at `y`."""
    return (f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{extra}>'
            f"{html.escape(text)}</text>")


def _flags(xs: list[float], widths: list[float], right: float) -> list[tuple[int, float, float]]:
    """Rows for restart labels, each a flag on its line: (row, left, right edge); row 0 is nearest the plot.

    A label sits right of its line (left of it where the chart ends first). A line runs from its label's
    row down to the plot, so it must not cross a label in a row below, nor a label cross it: marks are
    placed from the right, each in the lowest row where it touches no label there and no line or label
    crosses it.
    """
    placed: dict[int, tuple[int, float, float]] = {}
    for j in sorted(range(len(xs)), key=lambda k: -xs[k]):
        x, w = xs[j], widths[j]
        a, b = (x + 4, x + 4 + w) if x + 4 + w <= right else (x - 4 - w, x - 4)
        top = max((r for r, _, _ in placed.values()), default=-1) + 1
        placed[j] = (next((r for r in range(top + 1) if _clear(placed, xs, r, x, a, b)), top), a, b)
    return [placed[j] for j in range(len(xs))]


def _clear(placed: dict[int, tuple[int, float, float]], xs: list[float], row: int, x: float, a: float,
           b: float) -> bool:
    """Whether a flag on line `x`, its label spanning [a, b] in `row`, touches none of those `placed`."""
    for i, (r, ai, bi) in placed.items():
        if r == row and ai < b + 8 and a < bi + 8:
            return False  # two labels in one row
        if r > row and a - 4 <= xs[i] <= b + 4:
            return False  # a line from a row above crosses this label
        if r < row and ai - 4 <= x <= bi + 4:
            return False  # this line would cross a label below
    return True


def _legend(series: list[Series], lost: bool, left: float, right: float, top: float) -> tuple[str, float]:
    """A row (or rows) of swatches above the plot; returns the SVG and its height."""
    entries = [(s.label, s.colour, s.dashed, _marked(s), s.hollow) for s in series if s.points]
    extra = [("re-run after a restart", "", False, False, False)] if lost else []
    parts, x, row = ['<g class="legend">'], left, 0
    for i, (label, colour, dashed, markers, hollow) in enumerate(entries + extra):
        w = 26 + text_width(label)
        if x + w > right and x > left:
            x, row = left, row + 1
        cy = top + 10 + 20 * row
        if i < len(entries):
            dash = ' stroke-dasharray="6 3"' if dashed else ""
            parts.append(f'<line x1="{_f(x)}" y1="{_f(cy)}" x2="{_f(x + 20)}" y2="{_f(cy)}" stroke="{colour}" '
                         f'stroke-width="2"{dash}/>')
            if markers:
                parts.append(f'<circle cx="{_f(x + 10)}" cy="{_f(cy)}" r="3.5" {_marker_paint(colour, hollow)}/>')
        else:
            parts.append(f'<rect x="{_f(x)}" y="{_f(cy - 6)}" width="20" height="12" fill="{LOST_FILL}" '
                         'fill-opacity="0.15"/>')
        parts.append(_text(x + 26, cy + FONT * 0.35, label))
        x += w + 18
    parts.append("</g>")
    return "".join(parts), (20 * (row + 1) if entries or lost else 0)


def _x_ticks(lo: float, hi: float, plot_w: float) -> tuple[list[float], list[str]]:
    """Ticks on the step axis, as many as fit with room between their labels."""
    count = 10
    while True:
        ticks = nice_ticks(lo, hi, count)
        labels = tick_labels(ticks)
        room = plot_w / max(len(ticks) - 1, 1)
        if count <= 2 or room >= max(text_width(t) for t in labels) + 16:
            return ticks, labels
        count -= 2


def line_chart(series: list[Series], *, y_title: str, x_title: str = "step",
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               y_zero: bool = False, marks: Sequence[Mark] = (), label: str = "") -> str:
    """A line chart of `series` on one y axis (one unit), steps along x.

    `x_range` (the stage's steps) keeps a stage's charts aligned; `y_range`
    fixes the y axis (a fraction: 0-1); `y_zero` keeps zero on it (throughput,
    margins). Held-out series are drawn dashed with markers.
    """
    series = [s for s in series if s.points]
    points = [p for s in series for p in s.points]
    if not points:
        return "<p><em>nothing logged yet</em></p>"
    xs, ys = [p[0] for p in points] + list(x_range or ()), [p[1] for p in points] + list(y_range or ())
    if y_zero:
        ys.append(0.0)
    x_lo = min(xs + [m.x for m in marks])
    x_hi = max(xs + [m.x for m in marks] + [m.lost[1] for m in marks if m.lost])
    y_ticks = nice_ticks(min(ys), max(ys), 5)
    y_labels = tick_labels(y_ticks)

    # The title band, the labels, a gap; at least what labels of up to four digits need, so that the
    # charts of a stage, stacked, line up.
    left = 6 + FONT * 1.3 + 8 + max(text_width(t) for t in [*y_labels, "0.000"]) + 8
    x_ticks, x_labels = _x_ticks(x_lo, x_hi, WIDTH - left - 40)
    # The last x label is centred on the plot's right edge: half of its width beyond it, plus a little.
    plot_l, plot_r = left, WIDTH - max(text_width(x_labels[-1]) / 2 + 8, 12)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    legend, legend_h = _legend(series, any(m.lost for m in marks), plot_l, WIDTH - 4, 4)
    # Restart labels: flags in a band of their own above the plot, in rows so that nothing crosses.
    mark_xs = [plot_l + (m.x - x0) / (x1 - x0) * (plot_r - plot_l) for m in marks]
    flags = _flags(mark_xs, [text_width(m.label, SMALL) for m in marks], WIDTH - 4)
    band = 18 * (max(r for r, _, _ in flags) + 1) if marks else 0
    plot_t = 4 + legend_h + 6 + band + 8
    plot_b = plot_t + PLOT_HEIGHT
    height = plot_b + 10 + FONT * (ASCENT + DESCENT) + 6 + FONT * (ASCENT + DESCENT) + 6

    def sx(x: float) -> float:
        return plot_l + (x - x0) / (x1 - x0) * (plot_r - plot_l)

    def sy(y: float) -> float:
        return plot_b - (y - y0) / (y1 - y0) * (plot_b - plot_t)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_f(height)}" '
             f'width="100%" role="img" aria-label="{html.escape(label or y_title)}" font-family="sans-serif" '
             f'style="display:block;width:100%;height:auto">', legend, '<g class="grid axes">']
    for t, text in zip(y_ticks, y_labels, strict=True):
        zero = t == 0 and y0 < 0 < y1
        parts.append(f'<line x1="{_f(plot_l)}" y1="{_f(sy(t))}" x2="{_f(plot_r)}" y2="{_f(sy(t))}" '
                     f'stroke="{"#999" if zero else "#e4e4e4"}"/>')
        parts.append(_text(plot_l - 8, sy(t) + FONT * 0.35, text, anchor="end"))
    for t, text in zip(x_ticks, x_labels, strict=True):
        parts.append(f'<line x1="{_f(sx(t))}" y1="{_f(plot_t)}" x2="{_f(sx(t))}" y2="{_f(plot_b + 4)}" '
                     'stroke="#efefef"/>')
        parts.append(_text(sx(t), plot_b + 10 + FONT * ASCENT, text, anchor="middle"))
    parts.append(f'<rect x="{_f(plot_l)}" y="{_f(plot_t)}" width="{_f(plot_r - plot_l)}" '
                 f'height="{_f(plot_b - plot_t)}" fill="none" stroke="#bbb"/>')
    mid = (plot_t + plot_b) / 2
    title_x = 6 + FONT * ASCENT
    parts.append(_text(title_x, mid, y_title, anchor="middle", extra=f' transform="rotate(-90 {_f(title_x)} '
                                                                      f'{_f(mid)})"'))
    parts.append(_text((plot_l + plot_r) / 2, height - 6 - FONT * DESCENT, x_title, anchor="middle"))
    parts.append("</g>")
    parts.append(_marks(marks, mark_xs, flags, sx, plot_t, plot_b))
    parts.append(_data(series, sx, sy))
    parts.append("</svg>")
    return "".join(parts)


def _marks(marks: Sequence[Mark], xs: list[float], flags: list[tuple[int, float, float]], sx, plot_t: float,
           plot_b: float) -> str:
    """Restart lines from their label (in the band above the plot) down to the x axis, re-run steps shaded."""
    parts = ['<g class="marks">']
    for m, x, (row, left, _) in zip(marks, xs, flags, strict=True):
        if m.lost and m.lost[1] > m.lost[0]:
            parts.append(f'<rect class="lost" x="{_f(sx(m.lost[0]))}" y="{_f(plot_t)}" '
                         f'width="{_f(sx(m.lost[1]) - sx(m.lost[0]))}" height="{_f(plot_b - plot_t)}" '
                         f'fill="{LOST_FILL}" fill-opacity="0.12"><title>{html.escape(m.tooltip)}</title></rect>')
        row_bottom = plot_t - 8 - 18 * row
        parts.append(f'<line x1="{_f(x)}" y1="{_f(row_bottom - 17)}" x2="{_f(x)}" y2="{_f(plot_b)}" '
                     f'stroke="#d63a3a" stroke-dasharray="4 3"><title>{html.escape(m.tooltip)}</title></line>')
        parts.append(_text(left, row_bottom - 1 - SMALL * DESCENT, m.label, size=SMALL, fill="#b02a2a"))
    parts.append("</g>")
    return "".join(parts)


# Markers, each with its tooltip, are drawn for at most this many points: more touch on a ~1,000 px plot, and a
# held-out loss every 5 steps of a 200,000-step run drew 40,000 of them (4 MB of page), where the line says it all.
MARKERS = 200


def _marked(s: Series) -> bool:
    return s.markers and len(s.points) <= MARKERS


def _marker_paint(colour: str, hollow: bool) -> str:
    return f'fill="white" stroke="{colour}" stroke-width="1.8"' if hollow else f'fill="{colour}"'


def _thin(points: list[tuple[float, float]], buckets: int = 1000) -> list[tuple[float, float]]:
    """At most ~4 points per bucket of the x range: the first, lowest, highest and last of each, so that a spike
    stays drawn (a chart is ~1,000 px wide; a 200,000-step run drew every step, a 4 MB page)."""
    if len(points) <= 4 * buckets:
        return points
    lo, hi = points[0][0], points[-1][0]
    width = (hi - lo) / buckets or 1.0
    out: list[tuple[float, float]] = []
    group: list[tuple[float, float]] = []
    key = None
    for p in points:
        k = int((p[0] - lo) / width)
        if k != key and group:
            out += sorted({group[0], min(group, key=lambda q: q[1]), max(group, key=lambda q: q[1]), group[-1]})
            group = []
        key = k
        group.append(p)
    out += sorted({group[0], min(group, key=lambda q: q[1]), max(group, key=lambda q: q[1]), group[-1]})
    return out


def _data(series: list[Series], sx, sy) -> str:
    parts = ['<g class="data">']
    for s in series:
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        if len(s.points) > 1:
            path = " ".join(f"{_f(sx(x))},{_f(sy(y))}" for x, y in _thin(s.points))
            parts.append(f'<polyline fill="none" stroke="{s.colour}" stroke-width="1.8"{dash} points="{path}">'
                         f"<title>{html.escape(s.label)}</title></polyline>")
        if _marked(s) or len(s.points) == 1:
            for x, y in s.points:
                parts.append(f'<circle cx="{_f(sx(x))}" cy="{_f(sy(y))}" r="{5 if s.hollow else 3.2}" '
                             f'{_marker_paint(s.colour, s.hollow)}>'
                             f"<title>{html.escape(s.label)}, step {x:g}: {human(y, 4)}</title></circle>")
    parts.append("</g>")
    return "".join(parts)


def time_bar(parts: Sequence[tuple[str, float, str]]) -> str:
    """One horizontal bar split by (label, seconds, colour); no text inside (the page writes the legend)."""
    total = sum(v for _, v, _ in parts)
    if total <= 0:
        return ""
    x, out = 0.0, ['<svg class="bar" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1000 22" width="100%" '
                   'preserveAspectRatio="none" style="display:block;width:100%;height:22px">']
    for label, value, colour in parts:
        w = value / total * 1000
        out.append(f'<rect x="{_f(x)}" y="0" width="{_f(w)}" height="22" fill="{colour}">'
                   f"<title>{html.escape(label)}: {duration(value)}</title></rect>")
        x += w
    out.append("</svg>")
    return "".join(out)
