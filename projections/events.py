"""Turning Kafka records and ``frame_events`` rows into :class:`ProjEvent`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from projections.fold import ProjEvent
from tracker.codec import FrameEventCodec
from tracker.errors import DecodeError
from tracker.events import from_micros
from tracker.telemetry import header, parse_traceparent


def from_kafka(codec: FrameEventCodec, msg: Any) -> ProjEvent | None:
    """``None`` for a record the event store dead-letters: projections skip it too."""
    try:
        rec = codec.decode_record(msg.value).record
    except DecodeError:
        return None
    tp = parse_traceparent(header(msg.headers, "traceparent"))
    return ProjEvent(
        event_id=rec["event_id"],
        event_type=rec["event_type"],
        frame_id=rec["frame_id"],
        camera_id=rec["camera_id"],
        frame_timestamp=from_micros(rec["frame_timestamp"]),
        occurred_at=from_micros(rec["occurred_at"]),
        stage=rec.get("stage"),
        attempt=rec.get("attempt") or 1,
        duration_ms=rec.get("duration_ms"),
        error_type=rec.get("error_type"),
        error_message=rec.get("error_message"),
        attributes=rec.get("attributes") or {},
        trace_id=tp[0] if tp else None,
    )


STORE_COLUMNS = (
    "event_id::text AS event_id, event_type, frame_id, camera_id, frame_timestamp, occurred_at, "
    "stage, attempt, duration_ms, error_type, error_message, data, trace_id"
)


def from_store(row: Mapping[str, Any]) -> ProjEvent:
    data = row["data"]
    attrs = json.loads(data) if isinstance(data, str) else (data or {})
    return ProjEvent(
        event_id=row["event_id"],
        event_type=row["event_type"],
        frame_id=row["frame_id"],
        camera_id=row["camera_id"],
        frame_timestamp=row["frame_timestamp"],
        occurred_at=row["occurred_at"],
        stage=row["stage"],
        attempt=row["attempt"],
        duration_ms=row["duration_ms"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        attributes=attrs,
        trace_id=row["trace_id"],
    )
