"""Inline SVG charts for the HTML report: plain markup, no script, nothing fetched.

Each function returns one `<svg>` element as text. Labels go through `escape`;
everything else is numbers. Hovering a bar or point shows its value (an SVG
`<title>`), which needs no script.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

PALETTE = ("#2b7bba", "#e6550d", "#31a354", "#756bb1", "#d6616b", "#8c6d31", "#17becf", "#636363")
AXIS, GRID = "#555", "#e4e4e4"
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 14, 40

Series = tuple[str, str, Sequence[float]]   # label, colour, one value per bin or bucket


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k" if v % 1000 == 0 else f"{v:,.0f}"
    return f"{v:g}" if abs(v) >= 1e-4 else f"{v:.0e}"   # 0.002, not 2e-03: ticks and buckets of ms read as such


def _duration(seconds: float) -> str:
    """A bucket's width as people say it: 2 ms, 0.5 s, 10 s."""
    return f"{seconds * 1000:g} ms" if seconds < 0.1 else f"{seconds:g} s"


def nice_ticks(hi: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `hi`."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / count
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1/2/5 x 10^n ticks between lo and hi (fewer when the range is wide)."""
    mults = (1, 2, 5) if math.log10(hi / lo) <= 3 else (1,)
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in mults:
            v = m * 10 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _frame(width: int, height: int, label: str) -> list[str]:
    return [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label)}">']


def _y_axis(parts: list[str], ticks: list[float], y_of, x0: float, x1: float, title: str) -> None:  # type: ignore[no-untyped-def]
    for v in ticks:
        y = y_of(v)
        parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>')
    if title:
        ymid = (y_of(ticks[0]) + y_of(ticks[-1])) / 2
        parts.append(f'<text transform="translate(14 {ymid:.1f}) rotate(-90)" text-anchor="middle" '
                     f'class="axis-title">{escape(title)}</text>')


def _legend(parts: list[str], series: Sequence[Series], x: float, y: float) -> None:
    for i, (label, col, _values) in enumerate(series):
        yy = y + i * 16
        parts.append(f'<rect x="{x:.1f}" y="{yy - 9:.1f}" width="12" height="10" fill="{col}"/>')
        parts.append(f'<text x="{x + 16:.1f}" y="{yy:.1f}" class="legend">{escape(label)}</text>')


def log_histogram(series: Sequence[Series], edges: Sequence[float], *, x_title: str, y_title: str = "calls",
                  width: int = 1000, height: int = 300) -> str:
    """Counts per log-spaced bin, one step line per series, on a shared log x axis (ms)."""
    lo, hi = edges[0], edges[-1]
    legend_w = 290 if series else 0
    x0, x1 = MARGIN_L, width - MARGIN_R - legend_w
    y0, y1 = height - MARGIN_B, MARGIN_T
    top = max((max(v) for _l, _c, v in series if len(v)), default=0)
    ticks = nice_ticks(top or 1)
    x_of = lambda v: x0 + (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (x1 - x0)  # noqa: E731
    y_of = lambda v: y0 - v / ticks[-1] * (y0 - y1)  # noqa: E731
    parts = _frame(width, height, f"{y_title} by {x_title}")
    _y_axis(parts, ticks, y_of, x0, x1, y_title)
    for v in log_ticks(lo, hi):
        x = x_of(v)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + 4}" stroke="{AXIS}"/>')
        parts.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle" class="tick">{_fmt(v)}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle" class="axis-title">'
                 f'{escape(x_title)}</text>')
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="{AXIS}"/>')
    for label, col, values in series:
        points = [f"{x0:.1f},{y0:.1f}"]
        for i, n in enumerate(values):
            xa, xb, y = x_of(edges[i]), x_of(edges[i + 1]), y_of(n)
            points += [f"{xa:.1f},{y:.1f}", f"{xb:.1f},{y:.1f}"]
        points.append(f"{x_of(edges[-1]):.1f},{y0:.1f}")
        parts.append(f'<polyline points="{" ".join(points)}" fill="{col}" fill-opacity="0.12" stroke="{col}" '
                     f'stroke-width="1.6"><title>{escape(label)}</title></polyline>')
        for i, n in enumerate(values):
            if n:
                xa, xb = x_of(edges[i]), x_of(edges[i + 1])
                parts.append(f'<rect x="{xa:.1f}" y="{y_of(n):.1f}" width="{max(xb - xa, 1):.1f}" '
                             f'height="{y0 - y_of(n):.1f}" fill="transparent"><title>{escape(label)}: {n:g} {"call" if n == 1 else "calls"}, '
                             f'{_fmt(edges[i])}–{_fmt(edges[i + 1])} ms</title></rect>')
    _legend(parts, series, x1 + 16, y1 + 12)
    parts.append("</svg>")
    return "\n".join(parts)


def timeline(bucket_s: float, lines: Sequence[Series], bars: Sequence[Series], *, line_title: str,
             bar_title: str, width: int = 1000, height: int = 360) -> str:
    """Two panels over one time axis: lines on top (e.g. calls in flight), stacked bars
    below (e.g. cancels per bucket, by kind)."""
    n = max((len(v) for _l, _c, v in (*lines, *bars)), default=0)
    legend_w = 290
    x0, x1 = MARGIN_L, width - MARGIN_R - legend_w
    split = MARGIN_T + (height - MARGIN_T - MARGIN_B) * 0.58
    top_y0, top_y1 = split - 10, MARGIN_T
    bot_y0, bot_y1 = height - MARGIN_B, split + 14
    span = max(n * bucket_s, 1e-9)
    x_of = lambda t: x0 + t / span * (x1 - x0)  # noqa: E731
    parts = _frame(width, height, f"{line_title} and {bar_title} over time")
    top = max((max(v) for _l, _c, v in lines if len(v)), default=0)
    t_ticks = nice_ticks(top or 1, 4)
    y_top = lambda v: top_y0 - v / t_ticks[-1] * (top_y0 - top_y1)  # noqa: E731
    _y_axis(parts, t_ticks, y_top, x0, x1, line_title)
    stacked = [sum(v[i] for _l, _c, v in bars if i < len(v)) for i in range(n)]
    b_ticks = nice_ticks(max(stacked, default=0) or 1, 3)
    y_bot = lambda v: bot_y0 - v / b_ticks[-1] * (bot_y0 - bot_y1)  # noqa: E731
    _y_axis(parts, b_ticks, y_bot, x0, x1, bar_title)
    for t in nice_ticks(span, 8):
        if t <= span + 1e-9:
            x = x_of(t)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bot_y0}" y2="{bot_y0 + 4}" stroke="{AXIS}"/>')
            parts.append(f'<text x="{x:.1f}" y="{bot_y0 + 16}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle" class="axis-title">'
                 f'seconds since the first call (buckets of {_duration(bucket_s)})</text>')
    for y in (top_y0, bot_y0):
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{AXIS}"/>')
    for label, col, values in lines:
        pts = " ".join(f"{x_of((i + 1) * bucket_s):.1f},{y_top(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{x0:.1f},{top_y0:.1f} {pts}" fill="none" stroke="{col}" stroke-width="1.8">'
                     f'<title>{escape(label)}, peak {max(values, default=0):g}</title></polyline>')
    bw = (x1 - x0) / max(n, 1)
    base = [0.0] * n
    for label, col, values in bars:
        for i, v in enumerate(values):
            if v:
                y_hi, y_lo = y_bot(base[i] + v), y_bot(base[i])
                parts.append(f'<rect x="{x0 + i * bw + bw * 0.1:.1f}" y="{y_hi:.1f}" width="{max(bw * 0.8, 0.8):.1f}" '
                             f'height="{y_lo - y_hi:.1f}" fill="{col}"><title>{escape(label)}: {v:g} at '
                             f'{_fmt(i * bucket_s)}–{_fmt((i + 1) * bucket_s)} s</title></rect>')
                base[i] += v
    _legend(parts, lines, x1 + 16, top_y1 + 12)
    _legend(parts, bars, x1 + 16, bot_y1 + 12)
    parts.append("</svg>")
    return "\n".join(parts)
