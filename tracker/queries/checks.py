"""The checks every query runs on its parameters before any statement does.

Each returns its value (``float`` for the numeric ones) or raises
``InvalidQuery``, which the CLI and the HTTP API turn into a usage error.
"""

from __future__ import annotations

import re

from tracker.errors import InvalidQuery

MAX_HOURS = 24 * 400
MAX_LIMIT = 1000
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


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
