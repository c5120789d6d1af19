"""Learned anomaly detection on the real stack.

Simulated traffic with labelled injections (``tracker.simulator.Injection``)
goes through the real pipeline; the detector, kept by the projection writer in
its transaction, must find an injected slowdown and a silent camera, and show
them in ``tracker anomalies``, the HTTP API, the metrics and the journeys of the
slow frames; clean traffic must raise nothing; a projection worker SIGKILLed
and restarted must carry on with what it had learned (it finds an injection
that comes before a relearned baseline would be warm), write no anomaly twice,
and end where a rebuild ends.

Windows of 5 s with 5 s of lateness (settings) and 3 cameras at 5 fps keep the
traffic to a few minutes of event time, published as fast as Kafka takes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from projections.inline import InlineFrames
from tests.integration.conftest import fresh_settings, wait_for
from tests.integration.helpers import api_server, consume_until_idle, publish_simulation, run_cli
from tests.integration.procs import Proc
from tests.integration.test_api import check_against_spec
from tracker.config import Settings
from tracker.metrics_registry import REGISTRY
from tracker.simulator import Injection, Injections

pytestmark = pytest.mark.integration

# The columns two runs over the same events must agree on (not the wall clock).
SAME = (
    "kind, camera_id, stage, frame_id, started_at, ended_at, windows, score, expected, observed, detected_at"
)


@pytest_asyncio.fixture
async def settings() -> AsyncIterator[Settings]:
    async with fresh_settings(anomaly_window_s=5, anomaly_lateness_s=5) as s:
        yield s


def _now() -> datetime:
    """Now, on a window's start (5 s): an injection at a whole number of windows
    from it starts a window, so its first window is wholly abnormal."""
    return datetime.fromtimestamp(int(time.time()) // 5 * 5, UTC)


def _traffic(
    prefix: str, seconds: float, *specs: str, start: datetime | None = None, seed: int = 11
) -> dict[str, Any]:
    return {
        "cameras": 3,
        "fps": 5.0,
        "duration_s": seconds,
        "seed": seed,
        "camera_prefix": prefix,
        "start": start or _now(),
        "injections": Injections(tuple(Injection.parse(s) for s in specs)),
    }


async def _rows(conn: asyncpg.Connection, table: str = "anomalies") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(f"SELECT {SAME} FROM {table} ORDER BY {SAME}")]


def _metric_samples(name: str) -> list[Any]:
    text = generate_latest(REGISTRY).decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]


async def test_a_slowdown_and_a_silent_camera_are_found_and_shown_everywhere(
    settings: Settings, db: asyncpg.Connection
) -> None:
    start = _now()
    cfg = _traffic("an", 180, "slow@an-001/detect:90+30x4", "silent@an-002:120+30", start=start)
    await publish_simulation(settings, **cfg)
    await consume_until_idle(settings, inline=InlineFrames.from_settings(settings))

    episodes = await db.fetch("SELECT * FROM anomalies WHERE frame_id = '' ORDER BY started_at")
    found = {(r["kind"], r["camera_id"], r["stage"]) for r in episodes}
    assert found == {("stage_slow", "an-001", "detect"), ("camera_silent", "an-002", "")}, episodes
    slow = next(r for r in episodes if r["kind"] == "stage_slow")
    # Found in the first window of the injection, and known one window and the lateness later.
    assert slow["started_at"] == start + timedelta(seconds=90)
    assert slow["detected_at"] == start + timedelta(seconds=100)
    assert 3.0 < slow["observed"] / slow["expected"] < 5.5
    frame_id = await db.fetchval(
        "SELECT frame_id FROM anomalies WHERE kind = 'slow_frame' ORDER BY score DESC LIMIT 1"
    )
    assert frame_id is not None

    # The CLI, as text and JSON.
    out = run_cli(settings, "anomalies", "--hours", "1", "--json").stdout
    listed = json.loads(out)
    assert {(a["kind"], a["camera_id"], a["stage"]) for a in listed["anomalies"]} == {
        ("stage_slow", "an-001", "detect"),
        ("camera_silent", "an-002", None),
    }
    assert listed["counts"] == {"camera_silent": 1, "stage_slow": 1}
    text = run_cli(settings, "anomalies", "--hours", "1").stdout
    assert "stage_slow on an-001 detect" in text and "camera_silent on an-002" in text
    bad = run_cli(settings, "anomalies", "--hours", "-1", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    # The journey of a slow frame: its own slow stage, and the episode it fell in.
    journey = json.loads(run_cli(settings, "journey", frame_id, "--json").stdout)
    kinds = {(a["kind"], a["stage"]) for a in journey["detected_anomalies"]}
    assert kinds == {("slow_frame", "detect"), ("stage_slow", "detect")}
    assert "detected: slow_frame on an-001 detect" in run_cli(settings, "journey", frame_id).stdout

    # The API, as documented.
    async with api_server(settings) as base:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/v1/anomalies", params={"hours": "1"}) as r:
                body = await r.json()
            assert r.status == 200
            check_against_spec("/api/v1/anomalies", 200, body)
            assert body["anomalies"] == listed["anomalies"]
            slow_api = next(a for a in body["anomalies"] if a["kind"] == "stage_slow")
            assert slow_api["frames"] > 0 and slow_api["trace"]["trace_id"]
            async with session.get(f"{base}/api/v1/frames/{frame_id}") as r:
                check_against_spec("/api/v1/frames/{frame_id}", r.status, await r.json())
            async with session.get(f"{base}/api/v1/anomalies", params={"hours": "x"}) as r:
                assert r.status == 400

    # The metrics: episodes by camera, stage and kind; slow frames with their trace.
    opened = {
        (s.labels["camera_id"], s.labels["stage"], s.labels["kind"])
        for s in _metric_samples("tracker_anomalies_total")
        if s.labels["camera_id"].startswith("an-")
    }
    assert {("an-001", "detect", "stage_slow"), ("an-002", "", "camera_silent")} <= opened
    exemplars = [
        s.exemplar.labels["trace_id"]
        for s in _metric_samples("tracker_anomalies_total")
        if s.labels["camera_id"] == "an-001" and s.labels["kind"] == "slow_frame" and s.exemplar
    ]
    assert exemplars and await db.fetchval(
        "SELECT count(*) FROM frame_events WHERE trace_id = $1", exemplars[0]
    )

    # A rebuild finds the same anomalies (its own detector pass over the history).
    before = await _rows(db)
    run_cli(settings, "replay", "--source", "store")
    assert await db.fetchval("SELECT generation FROM projection_state") == 2
    assert await _rows(db) == before


async def test_clean_traffic_raises_none(settings: Settings, db: asyncpg.Connection) -> None:
    await publish_simulation(settings, **_traffic("cl", 150, "drift@cl-003/analyze:0+150x1.3"))
    await consume_until_idle(settings, inline=InlineFrames.from_settings(settings))
    assert await db.fetch("SELECT * FROM anomalies") == []
    # ... and not because nothing was judged: the windows up to the watermark were closed.
    state = await db.fetchrow("SELECT next_window, state FROM anomaly_detector")
    first = await db.fetchval("SELECT min(frame_timestamp) FROM processing_stages")
    assert (state["next_window"] - first).total_seconds() > 130
    assert len(json.loads(state["state"])["stages"]) == 9


async def test_a_restarted_worker_keeps_what_it_learned(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    start = _now()
    # 80 s of traffic, projected by a worker that is SIGKILLed once it has closed
    # the windows up to 70 s; then 80 s more, with a slowdown 20 s in (100 s from
    # the start), projected by a worker started again. A baseline learned again
    # from scratch would need 60 s (12 windows) before it may alarm.
    await publish_simulation(settings, **_traffic("rs", 80, start=start))
    await consume_until_idle(settings)  # the store only: the projection worker projects
    env = {"TRACKER_BATCH_MAX_RECORDS": "300"}
    worker = Proc(settings, "project", "--metrics-port", "0", log=tmp_path / "p1.log", **env).start()
    try:

        async def learned_a_while() -> bool:
            nxt = await db.fetchval("SELECT next_window FROM anomaly_detector")
            return nxt is not None and nxt >= start + timedelta(seconds=70)

        await wait_for(learned_a_while, timeout=60, interval=0.1)
        worker.kill()
        killed_at = await db.fetchval("SELECT next_window FROM anomaly_detector")
        assert killed_at < start + timedelta(seconds=100)
        second = _traffic(
            "rs", 80, "slow@rs-003/analyze:20+30x4", start=start + timedelta(seconds=80), seed=12
        )
        await publish_simulation(settings, **second)
        await consume_until_idle(settings)
        again = Proc(
            settings, "project", "--metrics-port", "0", "--until-idle", log=tmp_path / "p2.log", **env
        )
        assert await again.start().wait(timeout=120) == 0, again.log_tail()
    finally:
        worker.kill()
    found = await db.fetch("SELECT * FROM anomalies WHERE frame_id = ''")
    assert [(r["kind"], r["camera_id"], r["stage"]) for r in found] == [("stage_slow", "rs-003", "analyze")]
    assert found[0]["started_at"] == start + timedelta(seconds=100)
    # Nothing twice, nothing lost: what a rebuild over the same events finds.
    before = await _rows(db)
    run_cli(settings, "replay", "--source", "store")
    assert await _rows(db) == before
