"""Small time-series plots as inline SVG, drawn on the server (no JavaScript library)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def _fmt(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2g}"


def plot(
    title: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    unit: str = "",
    width: int = 360,
    height: int = 120,
) -> Markup:
    """Lines of ``(t, value)`` points (t in seconds) sharing one y axis from zero."""
    pad_l, pad_r, pad_t, pad_b = 40, 8, 20, 18
    points = [p for _name, pts in series for p in pts]
    parts = [
        f'<svg class="plot" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" aria-label="{escape(title)}">',
        f'<text x="{pad_l}" y="13" class="plot-title">{escape(title)}</text>',
    ]
    if len(points) < 2:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" class="plot-empty">'
            "collecting…</text></svg>"
        )
        return Markup("".join(parts))
    t0 = min(t for t, _ in points)
    t1 = max(t for t, _ in points)
    top = max(max(v for _, v in points), 1e-9)
    span = max(t1 - t0, 1e-9)
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(t: float, v: float) -> str:
        return f"{pad_l + (t - t0) / span * w:.1f},{pad_t + h - v / top * h:.1f}"

    parts += [
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" class="axis"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" class="axis"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end" class="tick">'
        f"{_fmt(top)}{escape(unit)}</text>",
        f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end" class="tick">0</text>',
        f'<text x="{pad_l}" y="{height - 4}" class="tick">-{span:.0f}s</text>',
        f'<text x="{pad_l + w}" y="{height - 4}" text-anchor="end" class="tick">now</text>',
    ]
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if pts:
            line = " ".join(xy(t, v) for t, v in pts)
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}">'
                f"<title>{escape(name)}</title></polyline>"
            )
        parts.append(
            f'<text x="{pad_l + 8 + 90 * i}" y="{pad_t + 10}" fill="{colour}" class="legend">'
            f"{escape(name[:14])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
