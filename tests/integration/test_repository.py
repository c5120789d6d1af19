"""FrameRepository against the real broker, stopped and restarted under it.

While the broker is down, ``save`` raises one clear error and keeps the
frame's events pending; once it is back, the next ``save`` publishes them:
the event store then holds every event the frame's transitions implied,
each once.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter

import asyncpg
import pytest

from tests.integration.conftest import stack
from tests.integration.helpers import consume_until_idle, span_exporter
from tracker.config import Settings
from tracker.domain import Frame, ProcessingState
from tracker.errors import PublishError
from tracker.logs import setup_logging
from tracker.publisher import FramePublisher
from tracker.repository import FrameRepository

pytestmark = pytest.mark.faults


async def _stored(settings: Settings, frame_id: str) -> Counter[str]:
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        rows = await conn.fetch("SELECT event_id::text FROM frame_events WHERE frame_id = $1", frame_id)
        return Counter(r[0] for r in rows)
    finally:
        await conn.close()


async def test_save_while_the_broker_is_down_then_after_it_returns(settings: Settings) -> None:
    span_exporter()
    logs = io.StringIO()
    setup_logging("INFO", "json", stream=logs)
    # Short producer timeouts so that the outage is noticed in seconds, not in
    # the default 30 s; the repository's own bound is above them.
    async with FramePublisher(
        settings, producer_name="processor", request_timeout_ms=4000, retry_backoff_ms=200
    ) as pub:
        repo = FrameRepository(pub, timeout=20)
        frame = Frame.capture("cam-outage")
        frame.transition_to(ProcessingState.QUEUED)
        assert await repo.save(frame) == 2  # FrameCaptured, FrameQueued: broker up

        stack("stop-kafka")
        try:
            frame.transition_to(ProcessingState.PROCESSING)
            stage = frame.start_processing_stage("detect")
            stage.complete()
            t0 = time.monotonic()
            with pytest.raises(PublishError) as raised:
                await repo.save(frame)
            outage_s = time.monotonic() - t0
            err = raised.value
            assert err.pending == len(frame.pending_changes) == 3
            assert err.retriable and "\n" not in str(err) and "next save" in str(err)
            # Saving again during the outage fails the same way and loses nothing.
            frame.mark_as_completed()
            with pytest.raises(PublishError) as again:
                await repo.save(frame)
            assert again.value.pending == 4
        finally:
            stack("start-kafka")

        t1 = time.monotonic()
        assert await repo.save(frame) == 4
        recovery_s = time.monotonic() - t1
        assert frame.pending_changes == []
        assert await repo.save(frame) == 0

    setup_logging("WARNING", "json")
    print(f"\nsave in the outage failed after {outage_s:.1f} s; published {recovery_s:.1f} s after it")
    lines = logs.getvalue().splitlines()
    assert not any("Traceback" in line for line in lines), "a traceback reached the service's logs"
    for line in lines:
        json.loads(line)  # every line is one JSON object

    await consume_until_idle(settings)
    stored = await _stored(settings, frame.frame_id)
    implied = [c.change_id for c in frame.changes]
    assert len(implied) == 6
    assert stored == Counter(implied), "stored events differ from the implied ones"
