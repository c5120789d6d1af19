"""Finding frames by trace id: an operator holding a trace id (from a log line, a trace view or an
exemplar) asks the API or the web UI which frames it belongs to. The answer is read from the
stored events' trace ids, and it is exactly the frames whose events carry that trace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest_asyncio
from opentelemetry import trace

from tests.integration.helpers import (
    api_server,
    consume_until_idle,
    project_until_idle,
    publish_simulation,
    span_exporter,
)
from tests.integration.test_api import check_against_spec
from tracker import events as ev
from tracker.config import Settings
from tracker.publisher import FramePublisher


@pytest_asyncio.fixture
async def base(settings: Settings) -> AsyncIterator[str]:
    await publish_simulation(settings, cameras=2, fps=10, duration_s=2, seed=83)
    # Two frames published in one trace, as a service that handles a batch of frames may do.
    span_exporter()
    now = datetime.now(UTC)
    async with FramePublisher(settings, producer_name="batcher") as pub:
        with trace.get_tracer("tests").start_as_current_span("batch"):
            for i, fid in enumerate(("batch-frame-a", "batch-frame-b")):
                at = now + timedelta(seconds=i)
                await pub.publish(
                    ev.FrameCaptured(
                        frame_id=fid,
                        camera_id="cam-batch",
                        frame_timestamp=at,
                        occurred_at=at,
                        producer="batcher",
                    )
                )
    await consume_until_idle(settings)
    await project_until_idle(settings)
    async with api_server(settings) as url:
        yield url


async def _get(url: str, **params: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        return r.status, await r.json()


async def _traces(db: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await db.fetch("SELECT DISTINCT trace_id, frame_id FROM frame_events WHERE trace_id IS NOT NULL")
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["trace_id"], set()).add(r["frame_id"])
    return out


async def test_the_api_finds_exactly_the_frames_of_a_trace(base: str, db: asyncpg.Connection) -> None:
    traces = await _traces(db)
    shared = [t for t, frames in traces.items() if frames == {"batch-frame-a", "batch-frame-b"}]
    assert len(shared) == 1, traces  # the batch's trace, and only it, holds both frames
    single = next(t for t, frames in traces.items() if len(frames) == 1)
    for trace_id, frames in ((single, traces[single]), (shared[0], traces[shared[0]])):
        status, body = await _get(f"{base}/api/v1/frames", trace_id=trace_id.upper())  # any case
        assert status == 200, body
        check_against_spec("/api/v1/frames", status, body)
        assert {f["frame_id"] for f in body["frames"]} == frames
    status, body = await _get(f"{base}/api/v1/frames", trace_id=shared[0])
    assert [f["frame_id"] for f in body["frames"]] == ["batch-frame-b", "batch-frame-a"]  # latest first
    status, body = await _get(f"{base}/api/v1/frames", trace_id="f" * 32)
    assert (status, body["frames"]) == (200, [])
    for bad in ({"trace_id": "not-a-trace"}, {"trace_id": "0" * 32}, {"trace_id": single, "prefix": "cam"}):
        status, body = await _get(f"{base}/api/v1/frames", **bad)
        assert status == 400 and "trace" in body["error"] and "\n" not in body["error"], (bad, body)


async def test_the_search_box_opens_the_frame_of_a_trace(base: str, db: asyncpg.Connection) -> None:
    traces = await _traces(db)
    single, frames = next((t, f) for t, f in traces.items() if len(f) == 1)
    shared = next(t for t, f in traces.items() if len(f) == 2)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/ui/", params={"q": single}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].endswith(next(iter(frames))), r.headers
        async with s.get(f"{base}/ui/", params={"q": shared}) as r:
            page = await r.text()
            assert r.status == 200 and f"Frames of trace {shared}" in page
            assert "batch-frame-a" in page and "batch-frame-b" in page
        async with s.get(f"{base}/ui/", params={"q": "e" * 32}) as r:
            assert r.status == 404 and "nor an event of that trace" in await r.text()
