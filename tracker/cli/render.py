"""Plain-text rendering for the CLI: tables and the journey timeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([head, *body])


def render_journey(j: dict[str, Any]) -> str:
    out = [
        f"frame {j['frame_id']}  camera {j['camera_id']}  captured {j['frame_timestamp']}",
        f"state: {j['state'] or 'not yet projected'}"
        + (
            f"   total processing {j['total_processing_time_ms']:.1f} ms"
            if j.get("total_processing_time_ms") is not None
            else ""
        ),
    ]
    if j.get("error"):
        e = j["error"]
        out.append(f"error: {e['type']} in {e.get('stage') or '?'}: {e.get('message')}")
    if j.get("anomalies"):
        out.append(f"anomalies: {', '.join(j['anomalies'])}")
    if j.get("detected_anomalies"):
        from tracker.queries.shaping import describe_anomaly

        out.extend(f"detected: {describe_anomaly(a)}" for a in j["detected_anomalies"])
    if j.get("trace"):
        out.append(f"trace: {j['trace']['url']}")
    out.append("")
    out.append("timeline:")
    for e in j["events"]:
        delta = "" if e["since_previous_ms"] is None else f"+{e['since_previous_ms']:.1f} ms"
        what = e["event_type"]
        if e.get("stage"):
            what += f" {e['stage']}" + (f" (attempt {e['attempt']})" if e.get("attempt", 1) > 1 else "")
        if e.get("duration_ms") is not None:
            what += f" {e['duration_ms']:.1f} ms"
        if e.get("error_type"):
            what += f"  {e['error_type']}: {e.get('error_message') or ''}"
        if e.get("lifecycle_flag"):
            what += f"  [{e['lifecycle_flag']}]"
        out.append(f"  {e['occurred_at']}  {delta:>12}  {what}")
    if j["stages"]:
        out.append("")
        out.append(table(j["stages"], ["stage", "attempt", "status", "duration_ms", "error_type"]))
    return "\n".join(out)
