"""A frame's timeline as a Gantt chart: one SVG drawn on the server.

One row for the time the frame waited in the queue, then one row per stage
attempt in the order they ran, each bar from its start to its end (to now for
a stage still running). A failed attempt's bar is marked (class ``failed`` and
a cross); the wait before each attempt (since processing started or the
previous attempt ended) is a dashed line with its length written beside it.
Positions are SVG attributes, not inline styles, so the page's
Content-Security-Policy needs no ``'unsafe-inline'``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from tracker.api.html import Markup, fmt_ms, join, render

WIDTH = 1000
LABEL_W = 170
CHART_W = 640
ROW_H = 26
BAR_H = 16
TOP = 26


def _ts(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _ms(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() * 1000.0


def _step(span_ms: float) -> float:
    """A round tick step giving about six ticks over ``span_ms``."""
    raw = max(span_ms / 6.0, 1e-3)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def gantt(journey: dict[str, Any], now: datetime) -> Markup:
    ts = journey.get("timestamps") or {}
    events = journey.get("events") or []
    stages = journey.get("stages") or []
    starts = [_ts(ts.get("captured_at"))] + [_ts(e["occurred_at"]) for e in events[:1]]
    t0 = min((t for t in starts if t is not None), default=None)
    if t0 is None:
        return render('<p class="empty">No events yet.</p>')
    live = journey.get("state") not in ("completed", "failed", "conflicted")
    ends = [t0, *(_ts(e["occurred_at"]) for e in events)]
    ends += [_ts(s["finished_at"]) or _ts(s["started_at"]) for s in stages]
    if live:
        ends.append(now)
    t_end = max(t for t in ends if t is not None)
    span = max(_ms(t0, t_end), 1.0)

    def x(t: datetime) -> float:
        return LABEL_W + CHART_W * min(max(_ms(t0, t) / span, 0.0), 1.0)

    rows: list[Markup] = []
    y = TOP
    queued, started = _ts(ts.get("queued_at")), _ts(ts.get("processing_started_at"))
    if queued is not None:
        end = started or (now if live else t_end)
        wait = _ms(queued, end)
        rows.append(
            render(
                '<g class="row queue"><text class="label" x="4" y="{ty}">in queue</text>'
                '<rect class="bar wait" x="{x}" y="{y}" width="{w}" height="{h}">'
                "<title>waited {wait} in the queue</title></rect>"
                '<text class="note" x="{nx}" y="{ty}">{wait}</text></g>',
                ty=f"{y + BAR_H - 3:.0f}",
                x=f"{x(queued):.1f}",
                y=f"{y:.0f}",
                w=f"{max(x(end) - x(queued), 1.5):.1f}",
                h=BAR_H,
                wait=fmt_ms(wait),
                nx=f"{LABEL_W + CHART_W + 8}",
            )
        )
        y += ROW_H
    prev_end = started
    for s in stages:
        s_start = _ts(s["started_at"]) or _ts(s["finished_at"])
        if s_start is None:
            continue
        s_end = _ts(s["finished_at"]) or (now if live else t_end)
        status = s["status"]
        label = s["stage"] + (f" #{s['attempt']}" if s["attempt"] > 1 else "")
        wait_note = Markup("")
        if prev_end is not None and s_start >= prev_end:
            wait_ms = _ms(prev_end, s_start)
            wait_note = render(
                '<line class="gap" x1="{x1}" y1="{ly}" x2="{x2}" y2="{ly}"><title>waited {w}</title></line>',
                x1=f"{x(prev_end):.1f}",
                x2=f"{x(s_start):.1f}",
                ly=f"{y + BAR_H / 2:.0f}",
                w=fmt_ms(wait_ms),
            )
            wait_text = f"wait {fmt_ms(wait_ms)}"
        else:
            wait_text = ""
        duration = s["duration_ms"] if s["duration_ms"] is not None else _ms(s_start, s_end)
        mark = {"failed": "✗ ", "conflicted": "⚠ ", "running": "… "}.get(status, "")
        error = f" — {s['error_type']}: {s['error_message'] or ''}" if s.get("error_type") else ""
        rows.append(
            render(
                '<g class="row stage">{wait}<text class="label" x="4" y="{ty}">{mark}{label}</text>'
                '<rect class="bar {status}" x="{x}" y="{y}" width="{w}" height="{h}" '
                'data-stage="{stage}" data-attempt="{attempt}" data-status="{status}">'
                "<title>{label}: {status} after {dur}{error}</title></rect>"
                '<text class="note {status}" x="{nx}" y="{ty}">{mark}{dur} {wait_text}</text></g>',
                wait=wait_note,
                ty=f"{y + BAR_H - 3:.0f}",
                mark=mark,
                label=label,
                status=status,
                x=f"{x(s_start):.1f}",
                y=f"{y:.0f}",
                w=f"{max(x(s_end) - x(s_start), 1.5):.1f}",
                h=BAR_H,
                stage=s["stage"],
                attempt=s["attempt"],
                dur=fmt_ms(duration),
                error=error,
                nx=f"{LABEL_W + CHART_W + 8}",
                wait_text=wait_text,
            )
        )
        prev_end = s_end
        y += ROW_H
    height = y + 6
    step = _step(span)
    ticks = []
    k = 0
    while k * step <= span + 1e-9 and k < 50:
        tx = LABEL_W + CHART_W * (k * step / span)
        ticks.append(
            render(
                '<line class="tick" x1="{x}" y1="{y1}" x2="{x}" y2="{y2}"></line>'
                '<text class="tick" x="{x}" y="14">{label}</text>',
                x=f"{tx:.1f}",
                y1=TOP - 6,
                y2=height,
                label=fmt_ms(k * step) if k else "0",
            )
        )
        k += 1
    return render(
        '<svg class="gantt" viewBox="0 0 {w} {h}" width="100%" role="img" '
        'aria-label="Timeline of the frame: {n} stage attempts">{ticks}{rows}</svg>',
        w=WIDTH,
        h=f"{height:.0f}",
        n=sum(1 for s in stages if s["started_at"] or s["finished_at"]),
        ticks=join(ticks),
        rows=join(rows),
    )
