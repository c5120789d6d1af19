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
from aiokafka.structs import RecordMetadata
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tracker import events as ev
from tracker.adapters.kafka import (
    broker_error,
    ensure_topics,
    make_producer,
    messaging_attributes,
    refusal,
)
from tracker.codec import CONTENT_TYPE, FrameEventCodec
from tracker.config import Settings
from tracker.domain import Frame, FrameError, ProcessingStage, ProcessingState
from tracker.errors import BrokerError
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
        role = f"publisher-{producer_name}"
        self._producer = make_producer(settings.kafka, role=role, **producer_options)
        # server.address, server.port and messaging.client.id of every send span
        self._client_attributes = messaging_attributes(settings.kafka, role)
        self._tracer = get_tracer("tracker.publisher")
        self._pending: set[asyncio.Future[Any]] = set()
        self._held: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self._started = False
        self.published = 0

    async def start(self) -> None:
        if self._started:
            return
        if self._create_topics:
            await ensure_topics(self.settings.kafka, self.settings.topics, self.settings.topics.events)
        try:
            await self._producer.start()
        except KafkaError as e:
            await self._producer.stop()
            raise await broker_error(self.settings.kafka, "cannot start producer", e) from e
        self._started = True

    def hold(self, task: asyncio.Task[Any]) -> None:
        """Keep the publisher open until ``task`` is done: :meth:`stop` waits
        for it before flushing (a repository's background publish, say)."""
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def stop(self) -> None:
        """Wait for held tasks, flush what is queued, then close. Safe to call twice."""
        if not self._started:
            return
        try:
            if self._held:
                await asyncio.gather(*list(self._held), return_exceptions=True)
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
        return self.settings.topics.of(event.source)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise BrokerError(f"an earlier publish failed: {failure}") from failure

    async def send(
        self, event: ev.FrameEvent, *, context: Context | None = None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one event and return its delivery future (resolved with the
        record's metadata once the broker has acknowledged it, or failed with a
        :class:`BrokerError`). ``context`` is the parent of the ``send`` span
        (default: the current context). The span ends when the delivery does,
        carrying the partition and offset the broker gave the record."""
        self._raise_failure()
        topic = self.topic_for(event)
        value = self.codec.encode(event)
        with frame_context(event):
            span = self._tracer.start_span(
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
                    **self._client_attributes,
                },
            )
            headers = inject_headers(trace.set_span_in_context(span, context))
        headers.append(("event_type", event.event_type.encode()))
        headers.append(("content-type", _CONTENT_TYPE))
        try:
            fut = await self._producer.send(topic, value=value, key=event.frame_id.encode(), headers=headers)
        except KafkaError as e:
            _end_failed(span, e)
            raise BrokerError(f"publish to {topic} failed: {e}", retriable=e.retriable) from e
        except BaseException as e:
            _end_failed(span, e)
            raise
        delivery: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[Any], et: str = event.event_type) -> None:
            if f.cancelled():
                span.end()
                if not delivery.done():
                    delivery.cancel()
                return
            exc = f.exception()
            if exc is not None:
                _end_failed(span, exc)
                if not delivery.done():
                    retriable = bool(getattr(exc, "retriable", False))
                    reason = refusal(self.settings.kafka, exc)
                    err = BrokerError(f"publish to {topic} failed: {reason}", retriable=retriable)
                    err.__cause__ = exc
                    delivery.set_exception(err)
                return
            meta = f.result()
            span.set_attribute("messaging.destination.partition.id", str(meta.partition))
            span.set_attribute("messaging.kafka.offset", meta.offset)
            span.end()
            self._delivered(topic, et)
            if not delivery.done():
                delivery.set_result(meta)

        fut.add_done_callback(done)
        return delivery

    async def publish(
        self, event: ev.FrameEvent, *, wait: bool = True, context: Context | None = None
    ) -> None:
        """Publish one event. ``context`` is the parent of the ``send`` span
        (default: the current context), e.g. the span of the frame's whole
        journey so that all its events share one trace. With ``wait=False``
        a delivery failure is raised by the next call or by :meth:`flush`."""
        delivery = await self.send(event, context=context)
        if wait:
            await delivery
        else:
            self._pending.add(delivery)
            delivery.add_done_callback(self._on_done)

    def _delivered(self, topic: str, event_type: str) -> None:
        self.published += 1
        events_published.labels(topic, event_type).inc()

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            if self._failure is None:
                self._failure = exc
            log.error("%s", exc)

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged; raise the first failure."""
        if self._started:
            await self._producer.flush()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._raise_failure()

    # ---- lifecycle helpers for services ------------------------------------
    # Each moves the frame on (unless the service already did) and publishes
    # every change of the frame not yet published, the one just made included.
    async def publish_changes(self, frame: Frame, **kw: Any) -> int:
        """Publish ``frame``'s unpublished changes, oldest first; returns how many."""
        n = 0
        for change, event in ev.pending_events(frame, self.producer_name):
            await self.publish(event, **kw)
            frame.mark_published(change)
            n += 1
        return n

    async def captured(self, frame: Frame, **kw: Any) -> None:
        await self.publish_changes(frame, **kw)

    async def queued(self, frame: Frame, **kw: Any) -> None:
        if frame.state is not ProcessingState.QUEUED:
            frame.transition_to(ProcessingState.QUEUED)
        await self.publish_changes(frame, **kw)

    async def processing_started(self, frame: Frame, **kw: Any) -> None:
        if frame.state is not ProcessingState.PROCESSING:
            frame.transition_to(ProcessingState.PROCESSING)
        await self.publish_changes(frame, **kw)

    async def completed(self, frame: Frame, **kw: Any) -> None:
        if frame.state is not ProcessingState.COMPLETED:
            frame.mark_as_completed()
        await self.publish_changes(frame, **kw)

    async def failed(
        self,
        frame: Frame,
        error: BaseException | FrameError | str | None = None,
        *,
        error_type: str | None = None,
        **kw: Any,
    ) -> None:
        if frame.state is not ProcessingState.FAILED:
            frame.mark_as_failed(error, error_type=error_type)
        await self.publish_changes(frame, **kw)

    async def stage_started(self, stage: ProcessingStage, **kw: Any) -> None:
        await self.publish_changes(stage.frame, **kw)

    async def stage_finished(self, stage: ProcessingStage, **kw: Any) -> None:
        await self.publish_changes(stage.frame, **kw)

    @contextlib.asynccontextmanager
    async def stage(self, frame: Frame, name: str, **kw: Any) -> AsyncIterator[ProcessingStage]:
        """Emit ``StageStarted``, run the block, then ``StageCompleted`` or
        ``StageFailed`` (re-raising the block's error). The block may finish
        the stage itself (``stage.complete()`` or ``stage.fail(...)``)."""
        stage = frame.start_processing_stage(name)
        with frame_context(frame), self._tracer.start_as_current_span(f"stage {name}"):
            await self.stage_started(stage, **kw)
            try:
                yield stage
            except Exception as exc:
                if not stage.finished:
                    stage.fail(exc)
                await self.stage_finished(stage, **kw)
                raise
            if not stage.finished:
                stage.complete()
            await self.stage_finished(stage, **kw)


def _end_failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
    span.end()
