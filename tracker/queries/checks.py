"""The checks every query runs on its parameters before any statement does.

Each returns its value (``float`` for the numeric ones) or raises
``InvalidQuery``, which the CLI and the HTTP API turn into a usage error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tracker.errors import InvalidQuery

MAX_HOURS = 24 * 400
MAX_LIMIT = 1000
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def is_trace_id(text: str) -> bool:
    """Whether ``text`` reads as a W3C trace id (32 hex digits, not all zeros; any case)."""
    t = text.strip().lower()
    return bool(_TRACE_ID_RE.match(t)) and t != "0" * 32


def check_trace_id(trace_id: str) -> str:
    """The trace id in the form it is stored (lower case)."""
    if not isinstance(trace_id, str) or not is_trace_id(trace_id):
        raise InvalidQuery("trace id must be 32 hexadecimal digits, not all zeros")
    return trace_id.strip().lower()


def check_frame_id(frame_id: str) -> str:
    if not isinstance(frame_id, str) or not _ID_RE.match(frame_id) or not frame_id.strip():
        raise InvalidQuery("frame id must be 1-256 printable characters")
    return frame_id


def check_camera_id(camera_id: str) -> str:
    if not isinstance(camera_id, str) or len(camera_id) > 128 or not _ID_RE.match(camera_id):
        raise InvalidQuery("camera id must be 1-128 printable characters")
    return camera_id


def check_hours(hours: float) -> float:
    if not isinstance(hours, (int, float)) or not 0 < hours <= MAX_HOURS or hours != hours:
        raise InvalidQuery(f"hours must be > 0 and <= {MAX_HOURS}")
    return float(hours)


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def check_threshold(ms: float) -> float:
    if not isinstance(ms, (int, float)) or not 0 <= ms <= 86_400_000 or ms != ms:
        raise InvalidQuery("threshold_ms must be between 0 and 86400000")
    return float(ms)


def check_time_range(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """A window of at most ``MAX_HOURS``, ``since`` before ``until``, both with a time zone."""
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidQuery("since and until need a time zone (e.g. 2026-01-01T10:00:00Z)")
    if not since < until:
        raise InvalidQuery("since must be before until")
    if until - since > timedelta(hours=MAX_HOURS):
        raise InvalidQuery(f"the window may span at most {MAX_HOURS} hours")
    return since, until


def parse_time(name: str, raw: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC (what the UI's fields send)."""
    try:
        ts = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidQuery(f"{name} must be an ISO 8601 time, e.g. 2026-01-01T10:00:00Z") from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
