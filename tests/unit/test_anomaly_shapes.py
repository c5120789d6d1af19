"""How an anomaly row reads in the JSON of the CLI, the API and the journey,
and in one line of text."""

from __future__ import annotations

from datetime import UTC, datetime

from tracker.queries.shaping import anomalies, anomaly, describe_anomaly

T = datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "kind": "stage_slow",
        "camera_id": "cam-1",
        "stage": "detect",
        "frame_id": "",
        "started_at": T,
        "ended_at": T,
        "windows": 3,
        "score": 12.34567,
        "expected": 45.0,
        "observed": 135.5,
        "detected_at": T,
        "recorded_at": T,
        "trace_id": None,
        "frames": 7,
        "sample_frame_id": "f-1",
    }
    return {**row, **kw}


def test_an_episode_and_a_frame() -> None:
    a = anomaly(_row())
    assert a["stage"] == "detect" and a["frame_id"] is None and a["unit"] == "ms" and a["score"] == 12.346
    assert a["started_at"] == "2026-01-01T00:01:30Z"
    silent = anomaly(_row(kind="camera_silent", stage="", expected=40.0, observed=0.0))
    assert silent["stage"] is None and silent["unit"] == "frames/window"
    assert anomaly(_row(kind="slow_frame", frame_id="f-9"))["frame_id"] == "f-9"


def test_the_list_counts_each_kind() -> None:
    out = anomalies(1.0, T, [_row(), _row(kind="failure_burst", expected=0.02, observed=0.5)], lambda _: None)
    assert out["counts"] == {"failure_burst": 1, "stage_slow": 1}
    assert out["anomalies"][0]["frames"] == 7 and out["anomalies"][0]["trace"] is None


def test_one_line_each() -> None:
    assert describe_anomaly(anomaly(_row())) == (
        "stage_slow on cam-1 detect: 135.5 ms, 3.0x the usual 45.0 ms (score 12.3) "
        "from 2026-01-01T00:01:30Z to 2026-01-01T00:01:30Z"
    )
    burst = describe_anomaly(anomaly(_row(kind="failure_burst", expected=0.02, observed=0.5)))
    assert burst.startswith("failure_burst on cam-1 detect: 50% of runs failed, usually 2.0%")
    silent = describe_anomaly(anomaly(_row(kind="camera_silent", stage="", expected=40.0, observed=0.0)))
    assert silent.startswith("camera_silent on cam-1: 0 frames/window, usually 40.0")
    frame = describe_anomaly(anomaly(_row(kind="slow_frame", frame_id="f-9")))
    assert frame == "slow_frame on cam-1 detect: 135.5 ms, 3.0x the usual 45.0 ms (score 12.3)"
