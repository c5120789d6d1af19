"""The example services (examples/) against the real Kafka and PostgreSQL.

For every frame they processed: each event stored once, the journey complete,
the journey's trace id equal to the trace id of the frame's spans, exemplars
on ``frame_processing_duration_seconds_bucket`` carrying that trace id, and a
failed frame's error type equal to the class of the exception raised.
"""

from __future__ import annotations

import re
from collections import defaultdict

import asyncpg
import pytest

from examples.processor_service import STAGES, AnalysisTimeout
from examples.run_pipeline import run
from tests.integration.helpers import consume_until_idle, project_until_idle, span_exporter
from tracker.config import Settings
from tracker.metrics import exposition
from tracker.queries import FrameTrackingQueries

COMPLETED_EVENTS = ["FrameCaptured", "FrameQueued", "ProcessingStarted"] + [
    t for _ in STAGES for t in ("StageStarted", "StageCompleted")
] + ["ProcessingCompleted"]
# fail_every fails the "analyze" stage: detect runs, analyze fails, notify never starts.
FAILED_EVENTS = [
    "FrameCaptured", "FrameQueued", "ProcessingStarted",
    "StageStarted", "StageCompleted", "StageStarted", "StageFailed", "ProcessingFailed",
]  # fmt: skip


async def test_example_services_end_to_end(settings: Settings) -> None:
    exporter = span_exporter()
    exporter.clear()
    result = await run(settings, cameras=2, frames=6, fail_every=4, processors=2)
    assert len(result.frame_ids) == 12
    assert len(result.failed) == 3  # every 4th of 12 processed frames

    await consume_until_idle(settings)
    await project_until_idle(settings)

    # The spans of each frame, by the frame.id every span carries.
    traces_of: dict[str, set[str]] = defaultdict(set)
    for span in exporter.get_finished_spans():
        fid = span.attributes.get("frame.id")
        if fid is not None:
            traces_of[str(fid)].add(format(span.context.trace_id, "032x"))
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"capture_frame", "process_frame"} <= names

    conn = await asyncpg.connect(settings.database.url.get())
    try:
        dupes = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT event_id) FROM frame_events WHERE frame_id = ANY($1)",
            result.frame_ids,
        )
    finally:
        await conn.close()
    assert dupes == 0

    async with FrameTrackingQueries.connect(settings) as q:
        for fid in result.frame_ids:
            journey = await q.get_frame_journey(fid)
            failed = fid in result.failed
            types = sorted(e["event_type"] for e in journey["events"])
            assert types == sorted(FAILED_EVENTS if failed else COMPLETED_EVENTS), fid
            assert journey["state"] == ("failed" if failed else "completed")
            assert [e["lifecycle_flag"] for e in journey["events"] if e["lifecycle_flag"]] == []
            # One trace per frame, camera and processor alike, and it is the spans' trace.
            assert len(traces_of[fid]) == 1, f"{fid}: spans in {len(traces_of[fid])} traces"
            (trace_id,) = traces_of[fid]
            assert [t["trace_id"] for t in journey["traces"]] == [trace_id]
            assert journey["trace"]["trace_id"] == trace_id
            producers = {e["producer"] for e in journey["events"]}
            assert producers == {"camera-service", "processor-service"}
            queued = next(e for e in journey["events"] if e["event_type"] == "FrameQueued")
            assert queued["kafka"]["topic"] == settings.topics.camera
            if failed:
                assert journey["error"]["type"] == AnalysisTimeout.__name__
                assert journey["error"]["stage"] == "analyze"
                stage = next(s for s in journey["stages"] if s["status"] == "failed")
                assert stage["error_type"] == AnalysisTimeout.__name__
            else:
                assert [s["stage"] for s in journey["stages"]] == list(STAGES)
                assert journey["total_processing_time_ms"] > 0

        # The failure analysis groups them under the exception's class, not "str".
        failures = await q.get_failure_analysis(hours=1)
        groups = failures["by_stage_error_camera"]
        assert {(g["stage"], g["error_type"]) for g in groups} == {("analyze", AnalysisTimeout.__name__)}
        assert sum(g["failures"] for g in groups) == len(result.failed)

    # Exemplars on the service's histogram lead to these frames' traces.
    text = exposition()[0].decode()
    exemplar_traces = set(
        re.findall(
            r'^frame_processing_duration_seconds_bucket\{[^}]*service="processor"[^}]*\} \S+ '
            r'# \{[^}]*trace_id="([0-9a-f]{32})"',
            text,
            re.M,
        )
    )
    frame_traces = {t for fid in result.frame_ids for t in traces_of[fid]}
    assert exemplar_traces, "no exemplar on frame_processing_duration_seconds_bucket"
    assert exemplar_traces <= frame_traces


@pytest.mark.parametrize("argv", [["--frames", "0"], ["--cameras", "x"]])
def test_example_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from examples.run_pipeline import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
