"""A picture of one lab run: each node's role and replica flag over time, as SVG.

People would rather look than read: the demo writes one of these per run.
SVG is text, needs no plotting library, and opens in any browser. The
input is the nodes' JSONL event logs (``nodeagent/events.py``): ``role_change``
events give the lanes' roles, ``protocol``/``persist`` events the flags,
and the caller adds markers (the split command, the crash, checks).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Fill colour of a flag's band: 0 white, A* blues (active's stages), B* oranges (standby).
FLAG_COLOURS = {
    "0": "#ffffff",
    "A1": "#c6dbef",
    "A2": "#6baed6",
    "A3": "#2171b5",
    "B1": "#fdd0a2",
    "B2": "#fd8d3c",
    "B3": "#d94801",
}
ROLE_COLOURS = {"active": "#31a354", "standby": "#9e9ac8", "down": "#bdbdbd"}


@dataclass(frozen=True)
class Lane:
    """One node: (time, flag) steps, (time, role) steps, the time it died (if it did)."""

    name: str
    flags: Sequence[tuple[float, str]]
    roles: Sequence[tuple[float, str]]
    died: float | None = None


def lane_from_events(
    name: str, events: Sequence[Mapping[str, Any]], died: float | None = None
) -> Lane:
    """Build a lane from one node's events (wall-clock ``ts``)."""
    flags = [
        (float(e["ts"]), str(e["flag"]))
        for e in events
        if e.get("kind") == "protocol" and e.get("what") == "persist"
    ]
    roles = [(float(e["ts"]), str(e["to"])) for e in events if e.get("kind") == "role_change"]
    return Lane(name, flags, roles, died)


def _steps(
    steps: Sequence[tuple[float, str]], t0: float, t1: float
) -> list[tuple[float, float, str]]:
    """(start, end, value) segments of a step function over [t0, t1]."""
    out = []
    ordered = sorted(steps)
    for i, (t, value) in enumerate(ordered):
        end = ordered[i + 1][0] if i + 1 < len(ordered) else t1
        start, end = max(t, t0), min(end, t1)
        if end > start:
            out.append((start, end, value))
    return out


def render_svg(
    lanes: Sequence[Lane],
    markers: Sequence[tuple[float, str]],
    *,
    title: str,
    start: float,
    end: float,
) -> str:
    """The SVG text: one row per node (role strip above, flag band below), markers as lines."""
    width, left, lane_h, top = 1000, 110, 70, 50
    span = max(end - start, 1e-6)
    height = top + lane_h * len(lanes) + 60 + 14 * len(markers)

    def x(t: float) -> float:
        return left + (width - left - 20) * (t - start) / span

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#fafafa"/>',
        f'<text x="10" y="22" font-size="16">{html.escape(title)}</text>',
    ]
    for i, lane in enumerate(lanes):
        y = top + i * lane_h
        last = lane.died if lane.died is not None else end
        parts.append(f'<text x="10" y="{y + 32}">{html.escape(lane.name)}</text>')
        for a, b, role in _steps(lane.roles, start, last):
            parts.append(
                f'<rect x="{x(a):.1f}" y="{y + 4}" width="{x(b) - x(a):.1f}" height="12" '
                f'fill="{ROLE_COLOURS.get(role, "#dddddd")}"><title>{html.escape(role)}'
                f"</title></rect>"
            )
        for a, b, flag in _steps(lane.flags, start, last):
            colour = FLAG_COLOURS.get(flag, "#eeeeee")
            parts.append(
                f'<rect x="{x(a):.1f}" y="{y + 20}" width="{x(b) - x(a):.1f}" height="26" '
                f'fill="{colour}" stroke="#888"><title>flag {html.escape(flag)}</title></rect>'
            )
            if flag != "0" and x(b) - x(a) > 18:
                parts.append(f'<text x="{x(a) + 3:.1f}" y="{y + 38}">{html.escape(flag)}</text>')
        if lane.died is not None:
            parts.append(
                f'<text x="{x(lane.died) + 4:.1f}" y="{y + 38}" fill="#a50f15">'
                "crashed (SIGKILL)</text>"
            )
    bottom = top + lane_h * len(lanes)
    for n, (t, label) in enumerate(sorted(markers)):
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{bottom}" '
            'stroke="#a50f15" stroke-dasharray="4,3"/>'
        )
        parts.append(
            f'<text x="{x(t) + 3:.1f}" y="{bottom + 16 + 14 * n}" fill="#a50f15">'
            f"{t - start:6.2f}s {html.escape(label)}</text>"
        )
    legend_y = height - 12
    lx = left
    for name, colour in [*ROLE_COLOURS.items(), *FLAG_COLOURS.items()]:
        parts.append(
            f'<rect x="{lx}" y="{legend_y - 10}" width="12" height="12" '
            f'fill="{colour}" stroke="#888"/>'
        )
        parts.append(f'<text x="{lx + 16}" y="{legend_y}">{html.escape(name)}</text>')
        lx += 30 + 8 * len(name)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_svg(
    path: Path,
    lanes: Sequence[Lane],
    markers: Sequence[tuple[float, str]],
    *,
    title: str,
    start: float,
    end: float,
) -> Path:
    path.write_text(render_svg(lanes, markers, title=title, start=start, end=end))
    return path
