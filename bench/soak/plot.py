"""The soak's picture: a hand-written SVG of three panels over the run's time axis.

1. throughput: calls per second that succeeded;
2. latency: p50, p95 and p99 of every call in the bucket, in milliseconds (log scale);
3. error rate: the share of calls in the bucket that did not succeed, in percent.

Fault events are vertical lines across every panel: a kill in red, labelled with the
process name, its restart in green. Time is seconds since the load started.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

WIDTH = 960
PANEL_HEIGHT = 170
LEFT, RIGHT, TOP, GAP = 70, 20, 40, 50
LATENCY_COLORS = {"p50": "#1f77b4", "p95": "#ff7f0e", "p99": "#9467bd"}


@dataclass
class Series:
    """Per-bucket values: bucket start (s since the load began) and the measures."""

    t: list[float]
    ok_per_s: list[float]
    p50_ms: list[float]
    p95_ms: list[float]
    p99_ms: list[float]
    error_pct: list[float]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank `q` quantile (0..1) of an ascending list; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[rank]


def series(records: Sequence[dict[str, Any]], start: float, duration_s: float,
           bucket_s: float) -> Series:
    """Buckets the calls by their end time, `bucket_s` seconds each."""
    n = max(1, math.ceil(duration_s / bucket_s))
    lat: list[list[float]] = [[] for _ in range(n)]
    ok = [0] * n
    for r in records:
        i = int((r["t1"] - start) / bucket_s)
        if 0 <= i < n:
            lat[i].append((r["t1"] - r["t0"]) * 1000)
            ok[i] += r["out"] == "ok"
    out = Series([], [], [], [], [], [])
    for i in range(n):
        values = sorted(lat[i])
        out.t.append((i + 0.5) * bucket_s)  # plotted at the bucket's middle
        out.ok_per_s.append(ok[i] / bucket_s)
        out.p50_ms.append(percentile(values, 0.50))
        out.p95_ms.append(percentile(values, 0.95))
        out.p99_ms.append(percentile(values, 0.99))
        out.error_pct.append(100 * (len(values) - ok[i]) / len(values) if values else 0.0)
    return out


class _Panel:
    """Maps (seconds, value) to pixels inside one panel."""

    def __init__(self, index: int, duration_s: float, top_value: float, log: bool) -> None:
        self.y0 = TOP + index * (PANEL_HEIGHT + GAP)
        self.duration_s = max(duration_s, 1e-9)
        self.log = log
        self.top = max(top_value, 1e-9)

    def x(self, t: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * min(max(t / self.duration_s, 0.0), 1.0)

    def y(self, v: float) -> float:
        if self.log:
            frac = math.log10(max(v, 1.0)) / math.log10(max(self.top, 10.0))
        else:
            frac = v / self.top
        return self.y0 + PANEL_HEIGHT * (1 - min(max(frac, 0.0), 1.0))

    def frame(self, title: str, unit: str) -> list[str]:
        bottom = self.y0 + PANEL_HEIGHT
        parts = [f'<rect x="{LEFT}" y="{self.y0}" width="{WIDTH - LEFT - RIGHT}" '
                 f'height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>',
                 f'<text x="{LEFT}" y="{self.y0 - 8}" font-size="13">{escape(title)}</text>',
                 f'<text x="{LEFT - 6}" y="{self.y0 + 10}" font-size="10" '
                 f'text-anchor="end">{self.top:.4g}</text>',
                 f'<text x="{LEFT - 6}" y="{bottom}" font-size="10" text-anchor="end">'
                 f'{1 if self.log else 0}</text>',
                 f'<text x="12" y="{self.y0 + PANEL_HEIGHT / 2}" font-size="10">'
                 f'{escape(unit)}</text>']
        ticks = 10
        for k in range(ticks + 1):
            t = self.duration_s * k / ticks
            parts.append(f'<text x="{self.x(t):.1f}" y="{bottom + 14}" font-size="10" '
                         f'text-anchor="middle">{t:.0f}s</text>')
        return parts

    def line(self, t: Sequence[float], v: Sequence[float], color: str) -> str:
        points = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in zip(t, v, strict=True))
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'


def svg(data: Series, duration_s: float, events: Sequence[dict[str, Any]], start: float,
        title: str) -> str:
    """The whole picture as SVG text; `events` are fault log entries (wall-clock `t`)."""
    height = TOP + 3 * (PANEL_HEIGHT + GAP)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="sans-serif">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
             f'<text x="{LEFT}" y="18" font-size="15">{escape(title)}</text>']
    panels = [
        _Panel(0, duration_s, max(data.ok_per_s, default=0) * 1.1, log=False),
        _Panel(1, duration_s, max(data.p99_ms, default=0) * 1.2, log=True),
        _Panel(2, duration_s, 100.0, log=False),
    ]
    parts += panels[0].frame("throughput (successful calls per second)", "calls/s")
    parts.append(panels[0].line(data.t, data.ok_per_s, "#2ca02c"))
    parts += panels[1].frame("latency p50 / p95 / p99 (ms, log scale)", "ms")
    for i, (name, color) in enumerate(LATENCY_COLORS.items()):
        parts.append(panels[1].line(data.t, getattr(data, f"{name}_ms"), color))
        parts.append(f'<text x="{WIDTH - RIGHT - 120 + 40 * i}" y="{panels[1].y0 - 8}" '
                     f'font-size="11" fill="{color}">{name}</text>')
    parts += panels[2].frame("error rate (% of calls that did not succeed)", "%")
    parts.append(panels[2].line(data.t, data.error_pct, "#d62728"))
    for e in events:
        kill = e["action"] == "kill"
        if e["action"] not in ("kill", "restart"):
            continue
        x = panels[0].x(float(e["t"]) - start)
        color = "#d62728" if kill else "#2ca02c"
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" '
                     f'y2="{height - GAP + 10}" stroke="{color}" stroke-width="1" '
                     f'stroke-dasharray="{"4,3" if kill else "1,3"}" opacity="0.8"/>')
        if kill:
            parts.append(f'<text x="{x + 2:.1f}" y="{TOP + 10}" font-size="9" fill="{color}" '
                         f'transform="rotate(90 {x + 2:.1f} {TOP + 10})">'
                         f'{escape(str(e["name"]))}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
