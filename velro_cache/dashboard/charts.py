"""Charts as SVG drawn on the server: readable without JavaScript, a CDN or a chart library.

Each chart scales to its container (``viewBox`` with ``width: 100%``), so the
same markup reads on a laptop and a phone. A line is broken where a minute had
no reads rather than drawn through zero, which would lie about the hit rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 40
PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[tuple[float, float | None]]  # (epoch seconds, value or None for a gap)


def _segments(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def empty_chart(title: str, why: str) -> SafeString:
    markup = '<figure class="velro-chart" data-empty="1"><figcaption>{}</figcaption><p class="velro-empty">{}</p></figure>'
    return format_html(markup, title, why)


def line_chart(title: str, lines: Sequence[Line], *, y_max: float | None = None, y_format: Callable[[float], str] = str) -> SafeString:
    """A time-series chart: one polyline per line (a dot where a run is one point), y from 0, a legend below."""
    xs = [x for line in lines for x, y in line.points if y is not None]
    ys = [y for line in lines for _x, y in line.points if y is not None]
    if not xs:
        return empty_chart(title, "No data yet.")
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 60
    top = y_max if y_max is not None else (max(ys) or 1.0) * 1.1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - min(y, top) / top * plot_h

    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="velro-plot"/>']
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h - fraction * plot_h
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="velro-grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="velro-axis">{escape(y_format(top * fraction))}</text>')
    for x, anchor in ((x0, "start"), (x1, "end")):
        stamp = time.strftime("%H:%M", time.gmtime(x))
        parts.append(f'<text x="{sx(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="{anchor}" class="velro-axis">{stamp} UTC</text>')
    legend_x = LEFT
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        for run in _segments(line.points):
            if len(run) == 1:
                parts.append(f'<circle cx="{sx(run[0][0]):.1f}" cy="{sy(run[0][1]):.1f}" r="3" fill="{color}" class="velro-series"/>')
            else:
                path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" class="velro-series"/>')
        parts.append(f'<rect x="{legend_x}" y="{HEIGHT - 14}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{HEIGHT - 5}" class="velro-legend">{escape(line.label)}</text>')
        legend_x += 24 + 7 * len(line.label)
    body = "".join(parts)
    return mark_safe(
        f'<figure class="velro-chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">{body}</svg></figure>'
    )  # nosec: every interpolated label went through escape()


def bar_chart(title: str, bars: Sequence[tuple[str, float, float]], *, value_format: Callable[[float], str] = str) -> SafeString:
    """Horizontal bars of ``(label, value, capacity)``: L1 bytes used of its budget, one bar per worker."""
    if not bars:
        return empty_chart(title, "No workers.")
    row, label_w = 26, 200
    height = TOP + row * len(bars) + 8
    parts = []
    for index, (label, value, capacity) in enumerate(bars):
        y = TOP + index * row
        share = value / capacity if capacity else 0.0
        width = (WIDTH - label_w - RIGHT - 90) * min(share, 1.0)
        color = PALETTE[2] if share >= 0.9 else PALETTE[0]
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" class="velro-axis">{escape(label[-28:])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{WIDTH - label_w - RIGHT - 90}" height="16" class="velro-plot"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="16" fill="{color}" class="velro-series"/>')
        parts.append(f'<text x="{WIDTH - RIGHT - 84}" y="{y + 15}" class="velro-axis">{escape(value_format(value))} ({share:.0%})</text>')
    body = "".join(parts)
    return mark_safe(
        f'<figure class="velro-chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">{body}</svg></figure>'
    )  # nosec: labels escaped
