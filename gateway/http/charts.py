"""Charts of the dashboard, drawn on the server as small SVG documents (no script, no library).

Each function takes plain figures and returns SVG markup with every text escaped.
"""

from __future__ import annotations

from html import escape


def bars(rows: list[tuple[str, float]], *, title: str, unit: str = "", note: dict[str, str] | None = None) -> str:
    """A horizontal bar chart: one bar a row, its value at its end (``note`` adds text per label)."""
    note = note or {}
    width, label_w, bar_w, row_h = 640, 230, 300, 22
    height = 30 + row_h * max(len(rows), 1)
    top = max((v for _, v in rows), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
             f'<text x="0" y="16" font-size="14" font-weight="bold">{escape(title)}</text>']
    if not rows:
        parts.append('<text x="0" y="44" font-size="12">nothing in this period</text>')
    for i, (label, value) in enumerate(rows):
        y = 28 + i * row_h
        w = round(bar_w * value / top)
        shown = f"{value:g}{unit}" + (f"  {note[label]}" if label in note else "")
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 8}" fill="#3b6ea5"/>'
                     f'<text x="{label_w + w + 6}" y="{y + 14}" font-size="12">{escape(shown)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line(points: list[tuple[str, float | None]], *, title: str, percent: bool = True) -> str:
    """A line over days (0 to 1 when ``percent``); a day without data leaves a gap."""
    width, height, left, bottom, top_pad = 640, 200, 40, 30, 26
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    n = max(len(points) - 1, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
             f'<text x="0" y="16" font-size="14" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#999"/>',
             f'<text x="0" y="{top_pad + 10}" font-size="11">{"100%" if percent else "max"}</text>',
             f'<text x="0" y="{top_pad + plot_h}" font-size="11">0</text>']
    runs, run = [], []
    for i, (label, value) in enumerate(points):
        if value is None:
            if run:
                runs.append(run)
            run = []
            continue
        x = left + plot_w * i / n
        y = top_pad + plot_h * (1 - value)
        run.append((x, y, label, value))
    if run:
        runs.append(run)
    for r in runs:
        if len(r) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in r)
            parts.append(f'<polyline points="{path}" fill="none" stroke="#3b6ea5" stroke-width="2"/>')
        for x, y, label, value in r:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#3b6ea5">'
                         f'<title>{escape(label)}: {value:.0%}</title></circle>')
    if points:
        parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">{escape(points[0][0])}</text>'
                     f'<text x="{left + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">'
                     f'{escape(points[-1][0])}</text>')
    if not runs:
        parts.append(f'<text x="{left + 10}" y="{top_pad + plot_h / 2}" font-size="12">no studies received</text>')
    parts.append("</svg>")
    return "".join(parts)
