"""``FramePublisher``: what camera and processor services embed to emit events.

Each publish is a ``send <topic>`` PRODUCER span (OpenTelemetry messaging
conventions); its context travels in the record headers (``traceparent``,
``tracestate``, ``baggage``) together with ``event_type`` and ``content-type``.
The key is the frame id, so every event of a frame lands on one partition of
each topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from aiokafka.errors import KafkaError
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from tracker import events as ev
from tracker.codec import CONTENT_TYPE, FrameEventCodec
from tracker.config import Settings
from tracker.domain import Frame, FrameError, ProcessingStage, ProcessingState
from tracker.errors import BrokerError
from tracker.kafka import ensure_topics, make_producer
from tracker.metrics import events_published
from tracker.telemetry import frame_context, get_tracer, inject_headers

log = logging.getLogger(__name__)
_CONTENT_TYPE = CONTENT_TYPE.encode()


class FramePublisher:
    """Async publisher of frame events; use as ``async with FramePublisher(...) as pub``.

    ``publish(..., wait=False)`` returns once the record is queued in the
    producer; a delivery failure is then raised by the next ``publish`` or by
    ``flush()`` rather than lost.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        producer_name: str = "tracker",
        codec: FrameEventCodec | None = None,
        create_topics: bool = True,
        **producer_options: Any,
    ) -> None:
        self.settings = settings
        self.producer_name = producer_name
        self.codec = codec or FrameEventCodec()
        self._create_topics = create_topics
        self._producer = make_producer(settings, **producer_options)
        self._tracer = get_tracer("tracker.publisher")
        self._pending: set[asyncio.Future[Any]] = set()
        self._failure: BaseException | None = None
        self._started = False
        self.published = 0

    async def start(self) -> None:
        if self._started:
            return
        if self._create_topics:
            await ensure_topics(self.settings, self.settings.event_topics)
        try:
            await self._producer.start()
        except KafkaError as e:
            await self._producer.stop()
            raise BrokerError(f"cannot start producer: {e}", retriable=e.retriable) from e
        self._started = True

    async def stop(self) -> None:
        """Flush what is queued, then close. Safe to call twice."""
        if not self._started:
            return
        try:
            await self.flush()
        finally:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> FramePublisher:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def topic_for(self, event: ev.FrameEvent) -> str:
        return self.settings.camera_topic if event.source == ev.CAMERA else self.settings.processing_topic

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise BrokerError(f"an earlier publish failed: {failure}") from failure

    async def publish(
        self, event: ev.FrameEvent, *, wait: bool = True, context: Context | None = None
    ) -> None:
        """Publish one event. ``context`` is the parent of the ``send`` span
        (default: the current context), e.g. the span of the frame's whole
        journey so that all its events share one trace."""
        self._raise_failure()
        topic = self.topic_for(event)
        value = self.codec.encode(event)
        with (
            frame_context(event),
            self._tracer.start_as_current_span(
                f"send {topic}",
                kind=SpanKind.PRODUCER,
                context=context,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": topic,
                    "messaging.kafka.message.key": event.frame_id,
                    "messaging.message.id": event.event_id,
                    "messaging.message.body.size": len(value),
                    "frame.event_type": event.event_type,
                },
            ) as span,
        ):
            headers = inject_headers()
            headers.append(("event_type", event.event_type.encode()))
            headers.append(("content-type", _CONTENT_TYPE))
            try:
                fut = await self._producer.send(
                    topic, value=value, key=event.frame_id.encode(), headers=headers
                )
            except KafkaError as e:
                span.set_status(Status(StatusCode.ERROR, str(e)))
                raise BrokerError(f"publish to {topic} failed: {e}", retriable=e.retriable) from e
            if wait:
                try:
                    await fut
                except KafkaError as e:
                    span.set_status(Status(StatusCode.ERROR, str(e)))
                    raise BrokerError(f"publish to {topic} failed: {e}", retriable=e.retriable) from e
                self._delivered(topic, event.event_type)
            else:
                self._pending.add(fut)
                fut.add_done_callback(lambda f, t=topic, et=event.event_type: self._on_done(f, t, et))

    def _delivered(self, topic: str, event_type: str) -> None:
        self.published += 1
        events_published.labels(topic, event_type).inc()

    def _on_done(self, fut: asyncio.Future[Any], topic: str, event_type: str) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            if self._failure is None:
                self._failure = exc
            log.error("delivery to %s failed: %s", topic, exc)
        else:
            self._delivered(topic, event_type)

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged; raise the first failure."""
        if self._started:
            await self._producer.flush()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._raise_failure()

    # ---- lifecycle helpers for services ------------------------------------
    async def captured(self, frame: Frame, **kw: Any) -> None:
        await self.publish(ev.frame_captured(frame, self.producer_name), **kw)

    async def queued(self, frame: Frame, **kw: Any) -> None:
        frame.transition_to(ProcessingState.QUEUED)
        await self.publish(ev.frame_queued(frame, self.producer_name), **kw)

    async def processing_started(self, frame: Frame, **kw: Any) -> None:
        frame.transition_to(ProcessingState.PROCESSING)
        await self.publish(ev.processing_started(frame, self.producer_name), **kw)

    async def completed(self, frame: Frame, **kw: Any) -> None:
        frame.mark_as_completed()
        await self.publish(ev.processing_completed(frame, self.producer_name), **kw)

    async def failed(
        self, frame: Frame, error: BaseException | FrameError, *, stage: str | None = None, **kw: Any
    ) -> None:
        frame.mark_as_failed(error)
        await self.publish(ev.processing_failed(frame, self.producer_name, stage=stage), **kw)

    async def stage_started(self, stage: ProcessingStage, **kw: Any) -> None:
        await self.publish(ev.stage_started(stage, self.producer_name), **kw)

    async def stage_finished(self, stage: ProcessingStage, **kw: Any) -> None:
        await self.publish(ev.stage_finished(stage, self.producer_name), **kw)

    @contextlib.asynccontextmanager
    async def stage(self, frame: Frame, name: str, **kw: Any) -> AsyncIterator[ProcessingStage]:
        """Emit ``StageStarted``, run the block, then ``StageCompleted`` or
        ``StageFailed`` (re-raising the block's error)."""
        stage = frame.start_processing_stage(name)
        with frame_context(frame), self._tracer.start_as_current_span(f"stage {name}"):
            await self.stage_started(stage, **kw)
            try:
                yield stage
            except Exception as exc:
                stage.fail(exc)
                await self.stage_finished(stage, **kw)
                raise
            stage.complete()
            await self.stage_finished(stage, **kw)
