"""Hand-made SVG charts rendered on the server: no JavaScript, no CDN, and they print."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from markupsafe import Markup, escape

COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[Any, Any]]]],
    width: int = 640,
    height: int = 180,
    title: str = "",
) -> Markup:
    """Lines over shared x positions (days); y from 0 (or the minimum when negative) to the maximum."""
    pad_l, pad_r, pad_t, pad_b = 48, 8, 20, 22
    values = [float(v) for _, points in series for _, v in points] or [0.0]
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1
    n = max((len(p) for _, p in series), default=1)
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(i: int, v: float) -> str:
        x = pad_l + (plot_w * i / max(n - 1, 1))
        y = pad_t + plot_h - (plot_h * (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{pad_l}" y="13" class="chart-title">{escape(title)}</text>',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_r}" y2="{pad_t + plot_h}" class="axis"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end" class="tick">{_num(hi)}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end" class="tick">{_num(lo)}</text>',
    ]
    for idx, (name, points) in enumerate(series):
        colour = COLOURS[idx % len(COLOURS)]
        coords = " ".join(xy(i, float(v)) for i, (_, v) in enumerate(points))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{coords}"/>')
        parts.append(
            f'<text x="{pad_l + 6 + idx * 130}" y="{height - 6}" fill="{colour}" class="legend">'
            f"■ {escape(name)}</text>"
        )
    if series and series[0][1]:
        first, last = series[0][1][0][0], series[0][1][-1][0]
        parts.append(
            f'<text x="{width - pad_r}" y="{height - 6}" text-anchor="end" class="tick">'
            f"{escape(str(first))} … {escape(str(last))}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped


def gauge(value: Decimal | str | None, label: str, size: int = 120) -> Markup:
    """A half-circle gauge of an attainment ratio (1 = 100 %), the needle capped at 150 %."""
    ratio = float(Decimal(str(value))) if value is not None else 0.0
    shown = max(0.0, min(ratio, 1.5)) / 1.5
    cx, cy, r = size / 2, size * 0.55, size * 0.42
    angle = math.pi * (1 - shown)
    x, y = cx + r * math.cos(angle), cy - r * math.sin(angle)
    colour = "#16a34a" if ratio >= 1 else "#ea580c" if ratio >= 0.8 else "#dc2626"
    large = 0
    arc_bg = f"M {cx - r:.1f} {cy:.1f} A {r:.1f} {r:.1f} 0 0 1 {cx + r:.1f} {cy:.1f}"
    arc = f"M {cx - r:.1f} {cy:.1f} A {r:.1f} {r:.1f} 0 {large} 1 {x:.1f} {y:.1f}"
    text = "—" if value is None else f"{ratio * 100:.1f} %"
    return Markup(  # noqa: S704 - the label is escaped; the rest are numbers
        f'<svg class="gauge" viewBox="0 0 {size} {size * 0.75:.0f}" role="img" '
        f'aria-label="{escape(label)} {text}" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<path d="{arc_bg}" fill="none" stroke="#e5e7eb" stroke-width="10"/>'
        f'<path d="{arc}" fill="none" stroke="{colour}" stroke-width="10"/>'
        f'<text x="{cx}" y="{cy - 4}" text-anchor="middle" class="gauge-value">{text}</text>'
        f'<text x="{cx}" y="{size * 0.72:.0f}" text-anchor="middle" class="gauge-label">'
        f"{escape(label[:28])}</text>"
        "</svg>"
    )


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:,.2f}".rstrip("0").rstrip(".")
