"""One frame's journey from its rows: the projected frame (if the projection has
it yet), its events in the order they occurred, its stage runs, and the traces
they belong to."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tracker.queries.shaping import Linker, Row, anomaly, iso, pick, round_ms

_TIMESTAMPS = ("captured_at", "queued_at", "processing_started_at", "completed_at", "failed_at")


def frame_journey(
    frame_id: str,
    frame: Row | None,
    events: Sequence[Row],
    stages: Sequence[Row],
    link: Linker,
    detected: Sequence[Row] = (),
) -> dict[str, Any]:
    """``frame`` is None for a frame that is stored but not projected yet; then
    ``events`` has at least one row. ``anomalies`` are the lifecycle flags of
    its events; ``detected_anomalies`` what the detector found: the frame's
    own slow stages, and the episodes of its camera it was captured in."""
    traces: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["trace_id"] and e["trace_id"] not in traces:
            traces[e["trace_id"]] = _trace(link, e["trace_id"])
    source = frame if frame is not None else events[0]
    out: dict[str, Any] = {
        "frame_id": frame_id,
        "camera_id": source["camera_id"],
        "frame_timestamp": iso(source["frame_timestamp"]),
        "state": frame["state"] if frame is not None else None,
        "projected": frame is not None,
        "events": [_event(e) for e in events],
        "stages": [_stage(s) for s in stages],
        "traces": list(traces.values()),
        "anomalies": sorted({e["lifecycle_flag"] for e in events if e["lifecycle_flag"]}),
        "detected_anomalies": [anomaly(a) for a in detected],
    }
    if frame is not None:
        out.update(
            {
                "timestamps": {k: iso(frame[k]) for k in _TIMESTAMPS},
                "total_processing_time_ms": round_ms(frame["total_processing_time_ms"]),
                "error": (
                    {
                        "type": frame["error_type"],
                        "message": frame["error_message"],
                        "stage": frame["error_stage"],
                    }
                    if frame["error_type"]
                    else None
                ),
                "metadata": frame["metadata"]
                if isinstance(frame["metadata"], dict)
                else json.loads(frame["metadata"] or "{}"),
                "events_applied": frame["events_applied"],
                "trace": _trace(link, frame["last_trace_id"]) if frame["last_trace_id"] else None,
            }
        )
    return out


def _trace(link: Linker, trace_id: str) -> dict[str, Any]:
    found = link(trace_id)
    assert found is not None
    return {"trace_id": found.trace_id, "url": found.url}


def _event(e: Row) -> dict[str, Any]:
    return {
        **pick(e, "event_id", "event_type"),
        "occurred_at": iso(e["occurred_at"]),
        "recorded_at": iso(e["recorded_at"]),
        "since_previous_ms": round_ms(e["since_previous_ms"]),
        **pick(e, "producer", "stage", "attempt"),
        "duration_ms": round_ms(e["duration_ms"]),
        **pick(e, "error_type", "error_message", "trace_id", "span_id", "lifecycle_flag"),
        "kafka": pick(e, "topic", "partition", "offset"),
    }


def _stage(s: Row) -> dict[str, Any]:
    return {
        **pick(s, "stage", "attempt", "status"),
        "started_at": iso(s["started_at"]),
        "finished_at": iso(s["finished_at"]),
        "duration_ms": round_ms(s["duration_ms"]),
        **pick(s, "error_type", "error_message"),
    }
