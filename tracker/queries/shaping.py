"""Rows of the window and statistics queries into the JSON shapes they return.

Times are ISO 8601 in UTC with a ``Z``, durations in milliseconds rounded to
three places, counts as ``int``; trace ids come with the link the settings'
``trace_url_template`` makes of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tracker.buckets import BUCKET_BOUNDS_MS, percentile_from_buckets

Row = Mapping[str, Any]


@dataclass(frozen=True)
class TraceLink:
    trace_id: str
    url: str


# FrameTrackingQueries.trace_link: None for a missing trace id.
Linker = Callable[[str | None], TraceLink | None]


def iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


def round_ms(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def hour_floor(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def pick(row: Row, *names: str) -> dict[str, Any]:
    """The named columns of ``row`` as they are, in that order."""
    return {name: row[name] for name in names}


def trace_url(link: Linker, trace_id: str | None) -> str | None:
    found = link(trace_id)
    return found.url if found else None


def slow_frames(rows: Iterable[Row], link: Linker) -> list[dict[str, Any]]:
    return [
        {
            **pick(r, "frame_id", "camera_id"),
            "frame_timestamp": iso(r["frame_timestamp"]),
            "state": r["state"],
            "total_processing_time_ms": round_ms(r["total_processing_time_ms"]),
            "slowest_stage": r["slowest_stage"],
            "slowest_stage_ms": round_ms(r["slowest_stage_ms"]),
            "trace_id": r["last_trace_id"],
            "trace_url": trace_url(link, r["last_trace_id"]),
        }
        for r in rows
    ]


def failure_analysis(
    hours: float,
    since: datetime,
    rows: list[Row],
    stage_rows: Iterable[Row],
    per_camera: dict[str, int],
    link: Linker,
) -> dict[str, Any]:
    """``rows`` are the failed frames by stage, error and camera; ``per_camera``
    the frames of the window by camera, which the rates are a share of."""
    total = sum(per_camera.values())
    failed = sum(int(r["failures"]) for r in rows)
    return {
        "window_hours": hours,
        "since": iso(since),
        "frames": total,
        "failed_frames": failed,
        "failure_rate": round(failed / total, 6) if total else 0.0,
        "by_stage_error_camera": [
            {
                **pick(r, "stage", "error_type", "camera_id"),
                "failures": int(r["failures"]),
                "rate": round(int(r["failures"]) / per_camera[r["camera_id"]], 6)
                if per_camera.get(r["camera_id"])
                else None,
                "first_seen": iso(r["first_seen"]),
                "last_seen": iso(r["last_seen"]),
                "sample_frame_id": r["sample_frame_id"],
                "sample_trace_id": r["sample_trace_id"],
                "sample_trace_url": trace_url(link, r["sample_trace_id"]),
            }
            for r in rows
        ],
        "stage_failures": [
            {
                **pick(r, "stage", "error_type"),
                "failures": int(r["failures"]),
                "first_seen": iso(r["first_seen"]),
                "last_seen": iso(r["last_seen"]),
                "sample_frame_id": r["sample_frame_id"],
            }
            for r in stage_rows
        ],
    }


def camera_stats(rows: Iterable[Row], hours: float) -> list[dict[str, Any]]:
    seconds = hours * 3600.0
    return [
        {
            "camera_id": r["camera_id"],
            "frames": int(r["frames"]),
            "throughput_fps": round(int(r["frames"]) / seconds, 4),
            "states": {
                k: int(r[k])
                for k in ("captured", "queued", "processing", "completed", "failed", "conflicted")
            },
            "failure_rate": round((int(r["failed"]) + int(r["conflicted"])) / int(r["frames"]), 6)
            if r["frames"]
            else 0.0,
            **percentiles(r["buckets"], r["timed"], r["time_sum_ms"], "processing_time"),
        }
        for r in rows
    ]


def stage_performance(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [
        {
            "stage": r["stage"],
            "runs": int(r["runs"]),
            "completed": int(r["completed"]),
            "failed": int(r["failed"]),
            "conflicted": int(r["conflicted"]),
            "running": int(r["running"]),
            "failure_rate": round(int(r["failed"]) / int(r["runs"]), 6) if r["runs"] else 0.0,
            **percentiles(r["buckets"], r["timed"], r["time_sum_ms"], "duration"),
        }
        for r in rows
    ]


def percentiles(buckets: list[int] | None, count: Any, total: Any, prefix: str) -> dict[str, Any]:
    # The bucket bounds are the projection's; they are repeated in sql/002
    # (tracker_bucket_bounds) and a test keeps them equal.
    b = list(buckets or [])
    n = int(count or 0)
    return {
        f"{prefix}_count": n,
        f"{prefix}_avg_ms": round(float(total) / n, 3) if n else None,
        f"{prefix}_p50_ms": round_ms(percentile_from_buckets(b, 0.50)),
        f"{prefix}_p95_ms": round_ms(percentile_from_buckets(b, 0.95)),
        f"{prefix}_p99_ms": round_ms(percentile_from_buckets(b, 0.99)),
        "bucket_bounds_ms": list(BUCKET_BOUNDS_MS),
    }


def frame_list(rows: Iterable[Row], link: Linker) -> list[dict[str, Any]]:
    """Frames found by a search: enough to pick one and open its journey."""
    return [
        {
            **pick(r, "frame_id", "camera_id"),
            "frame_timestamp": iso(r["frame_timestamp"]),
            "state": r["state"],
            "total_processing_time_ms": round_ms(r["total_processing_time_ms"]),
            **pick(r, "error_type", "error_stage"),
            "trace_id": r["last_trace_id"],
            "trace_url": trace_url(link, r["last_trace_id"]),
        }
        for r in rows
    ]


def closest_ids(frame_id: str, candidates: Iterable[str], limit: int) -> list[str]:
    """The candidates sharing the longest prefix with ``frame_id`` (at least three
    characters of it), longest first."""

    def common(other: str) -> int:
        n = 0
        for a, b in zip(frame_id, other, strict=False):
            if a != b:
                break
            n += 1
        return n

    scored = sorted({c for c in candidates if c != frame_id}, key=lambda c: (-common(c), c))
    return [c for c in scored if common(c) >= min(3, len(frame_id))][:limit]


def baselines(
    camera_id: str,
    hour: datetime,
    camera: Row | None,
    camera_stages: Iterable[Row],
    stages: Iterable[Row],
) -> dict[str, Any]:
    """One hour's p50/p95, from the hourly rollups: of the camera's total
    processing time (``camera``), of each stage's duration on that camera
    (``camera_stages``) and of each stage's duration on every camera (``stages``)."""

    def summary(r: Row | None) -> dict[str, Any]:
        buckets = list(r["buckets"] or []) if r else []
        return {
            "count": int(r["timed"] or 0) if r else 0,
            "p50_ms": round_ms(percentile_from_buckets(buckets, 0.50)),
            "p95_ms": round_ms(percentile_from_buckets(buckets, 0.95)),
        }

    return {
        "camera_id": camera_id,
        "hour": iso(hour),
        "camera": summary(camera),
        "camera_stages": [{"stage": r["stage"], **summary(r)} for r in camera_stages],
        "stages": [{"stage": r["stage"], **summary(r)} for r in stages],
    }


# What an anomaly's expected and observed figures are measured in, by kind.
ANOMALY_UNITS = {
    "stage_slow": "ms",
    "slow_frame": "ms",
    "failure_burst": "failures/run",
    "frame_rate_drop": "frames/window",
    "camera_silent": "frames/window",
}


def anomaly(r: Row) -> dict[str, Any]:
    """One row of ``anomalies``: an episode, or a frame of a slow window."""
    return {
        "kind": r["kind"],
        "camera_id": r["camera_id"],
        "stage": r["stage"] or None,
        "frame_id": r["frame_id"] or None,
        "started_at": iso(r["started_at"]),
        "ended_at": iso(r["ended_at"]),
        "windows": int(r["windows"]),
        "score": round(float(r["score"]), 3),
        "expected": round_ms(r["expected"]),
        "observed": round_ms(r["observed"]),
        "unit": ANOMALY_UNITS.get(r["kind"], ""),
        "detected_at": iso(r["detected_at"]),
    }


def anomalies(hours: float, since: datetime, rows: Iterable[Row], link: Linker) -> dict[str, Any]:
    out = []
    counts: dict[str, int] = {}
    for r in rows:
        found = link(r["trace_id"])
        out.append(
            {
                **anomaly({**r, "frame_id": ""}),
                "recorded_at": iso(r["recorded_at"]),
                "frames": int(r["frames"] or 0),
                "sample_frame_id": r["sample_frame_id"],
                "trace": {"trace_id": found.trace_id, "url": found.url} if found else None,
            }
        )
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return {"hours": hours, "since": iso(since), "anomalies": out, "counts": dict(sorted(counts.items()))}


def describe_anomaly(a: dict[str, Any]) -> str:
    """One line: what was abnormal, against what was expected."""
    where = a["camera_id"] + (f" {a['stage']}" if a.get("stage") else "")
    exp, obs, unit = a.get("expected"), a.get("observed"), a.get("unit")
    if a["kind"] in ("stage_slow", "slow_frame") and exp:
        what = f"{obs:.1f} ms, {obs / exp:.1f}x the usual {exp:.1f} ms"
    elif a["kind"] == "failure_burst" and exp is not None:
        what = f"{obs:.0%} of runs failed, usually {exp:.1%}"
    elif exp is not None:
        what = f"{obs:g} {unit}, usually {exp:.1f}"
    else:
        what = f"observed {obs}"
    span = "" if a["kind"] == "slow_frame" else f" from {a['started_at']} to {a['ended_at']}"
    return f"{a['kind']} on {where}: {what} (score {a['score']:.1f}){span}"
