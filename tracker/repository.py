"""``FrameRepository``: the write side a camera or processor service uses.

The ``Frame`` aggregate records the changes its transitions imply
(``Frame.changes``); ``await repo.save(frame)`` publishes, through a
:class:`~tracker.publisher.FramePublisher`, the ones not yet published, oldest
first, and marks each published once the broker has acknowledged it. So a
``save`` called again, or retried after a broker error, publishes each change
once: what was acknowledged is not sent again, what was not stays pending with
the same event id (the event store keeps an id once, should a send the broker
did take be retried after a lost acknowledgement).

``save_event(event)`` publishes one event built by the service. An event that
records a fact this repository has already published for the frame (same
frame, event type, stage and attempt), whether through ``save`` or
``save_event``, is not published again: ``frame.transition_to(PROCESSING)``,
``save(frame)`` and then ``save_event(ProcessingStarted...)`` record one
``ProcessingStarted``, not two. The memory of published facts is bounded
(``remember_frames`` most recent frames).

A frame this repository has saved is attached to it: when the frame
completes or fails, what is pending is published at once, in the background
(``FramePublisher.stop`` waits for it), so a failure that is raised rather
than saved is still recorded. A later ``save(frame)`` waits for that publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

from aiokafka.structs import RecordMetadata

from tracker import events as ev
from tracker.domain import Frame, FrameChange
from tracker.errors import BrokerError, PublishError
from tracker.publisher import FramePublisher

FactKey = tuple[str, str, str | None, int]
log = logging.getLogger(__name__)


class FrameRepository:
    """Publishes what happened to frames. ``publisher`` is started on first use
    if it is not already."""

    def __init__(
        self,
        publisher: FramePublisher,
        *,
        producer: str | None = None,
        remember_frames: int = 10_000,
        timeout: float | None = 60.0,
    ) -> None:
        if not isinstance(publisher, FramePublisher):
            raise TypeError(
                f"FrameRepository writes through a FramePublisher, not {type(publisher).__name__}"
            )
        self.publisher = publisher
        self.producer = producer or publisher.producer_name
        self.timeout = timeout
        self._remember = remember_frames
        self._facts: OrderedDict[str, set[FactKey]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[bool]] = {}

    # ---- memory of published facts ------------------------------------------
    def _published(self, key: FactKey) -> bool:
        facts = self._facts.get(key[0])
        return facts is not None and key in facts

    def _remember_fact(self, key: FactKey) -> None:
        facts = self._facts.get(key[0])
        if facts is None:
            facts = self._facts[key[0]] = set()
            while len(self._facts) > self._remember:
                self._facts.popitem(last=False)
        else:
            self._facts.move_to_end(key[0])
        facts.add(key)

    # ---- the write side ---------------------------------------------------------
    async def save(self, frame: Frame) -> int:
        """Publish ``frame``'s unpublished changes; returns how many this call
        saw published (sent by it, or by a save of the frame already under way).

        Raises :class:`PublishError` (one error, whatever the number of events)
        if any could not be published; those stay pending for the next save.
        """
        self._attach(frame)
        await self.publisher.start()
        todo: list[tuple[FrameChange, ev.FrameEvent]] = []
        under_way: list[asyncio.Future[bool]] = []
        for change in frame.pending_changes:
            running = self._in_flight.get(change.change_id)
            if running is not None:
                under_way.append(running)  # another save of this frame is sending it
                continue
            event = ev.event_for_change(frame, change, self.producer)
            if self._published(event.fact_key):
                frame.mark_published(change)  # the service published this fact itself
            else:
                todo.append((change, event))
        if not todo and not under_way:
            return 0
        loop = asyncio.get_running_loop()
        mine = {c.change_id: loop.create_future() for c, _ in todo}
        self._in_flight.update(mine)
        sent: list[tuple[FrameChange, ev.FrameEvent, asyncio.Future[RecordMetadata]]] = []
        first_error: BaseException | None = None
        published = 0
        try:
            # Queue every event before waiting for any: one round trip for the
            # frame, and the order of one partition is the order sent.
            for change, event in todo:
                try:
                    sent.append((change, event, await self._send(event)))
                except BrokerError as e:
                    first_error = e
                    break  # later events wait with the rest: nothing out of order
            for change, event, delivery in sent:
                try:
                    await self._wait(delivery)
                except BrokerError as e:
                    first_error = first_error or e
                    continue
                frame.mark_published(change)
                self._remember_fact(event.fact_key)
                mine[change.change_id].set_result(True)
                published += 1
        finally:
            for change_id, fut in mine.items():
                del self._in_flight[change_id]
                if not fut.done():
                    fut.set_result(False)
        for outcome in await asyncio.gather(*under_way, return_exceptions=True):
            if outcome is True:
                published += 1
            elif first_error is None:
                first_error = BrokerError("a concurrent save of this frame could not publish it")
        if first_error is not None:
            pending = len(frame.pending_changes)
            raise PublishError(
                f"frame {frame.frame_id!r}: {pending} event(s) not published ({first_error}); "
                "they stay pending and the next save(frame) publishes them",
                frame_id=frame.frame_id,
                pending=pending,
            ) from first_error
        return published

    # ---- a frame's end is published without waiting for a save ----------------
    def _attach(self, frame: Frame) -> None:
        if frame.on_terminal is None:
            frame.on_terminal = self._frame_ended

    def _frame_ended(self, frame: Frame) -> None:
        """A saved frame completed or failed. Services often fail a frame and
        re-raise without saving again (the guide's error handling does): its
        end must not stay unpublished, so it is published now, in the
        background; a save of the frame that follows waits for it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop: the next save(frame) publishes it
        task = loop.create_task(self._save_ended(frame), name=f"save ended frame {frame.frame_id}")
        self.publisher.hold(task)

    async def _save_ended(self, frame: Frame) -> None:
        try:
            await self.save(frame)
        except PublishError as e:
            # One line, no traceback: the events stay pending on the frame.
            log.warning("%s", e)

    async def save_event(self, event: ev.FrameEvent) -> bool:
        """Publish one event; ``False`` if this repository already published
        that fact of the frame (see the module's docstring). An event without
        a producer gets this repository's."""
        await self.publisher.start()
        if not event.producer:
            event = dataclasses.replace(event, producer=self.producer)
        if self._published(event.fact_key):
            return False
        try:
            await self._wait(await self._send(event))
        except BrokerError as e:
            raise PublishError(
                f"frame {event.frame_id!r}: {event.event_type} not published ({e}); "
                "save_event it again to retry (same event, same id)",
                frame_id=event.frame_id,
                pending=1,
            ) from e
        self._remember_fact(event.fact_key)
        return True

    @contextlib.asynccontextmanager
    async def track(self, frame: Frame) -> AsyncIterator[Frame]:
        """``async with repo.track(frame):`` saves the frame when the block
        ends, also when it raises (then the block's error propagates, and a
        failure to publish is chained to it rather than hiding it)."""
        try:
            yield frame
        except BaseException as block_error:
            try:
                await self.save(frame)
            except PublishError as e:
                block_error.__context__ = e
            raise
        await self.save(frame)

    async def _send(self, event: ev.FrameEvent) -> asyncio.Future[RecordMetadata]:
        try:
            async with asyncio.timeout(self.timeout):
                delivery = await self.publisher.send(event)
        except TimeoutError:
            raise BrokerError(f"no broker took the event within {self.timeout:g} s", retriable=True) from None
        # A delivery given up on (timed out) may still fail later: its error is
        # read here so that asyncio does not log it as never retrieved.
        delivery.add_done_callback(_retrieve)
        return delivery

    async def _wait(self, delivery: asyncio.Future[RecordMetadata]) -> RecordMetadata:
        try:
            # shield: a timed-out wait leaves the delivery to finish (or fail) on its own.
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(delivery)
        except TimeoutError:
            raise BrokerError(
                f"the broker did not acknowledge within {self.timeout:g} s", retriable=True
            ) from None


def _retrieve(fut: asyncio.Future[RecordMetadata]) -> None:
    if not fut.cancelled():
        fut.exception()


#: The name the Frame Tracking guide uses. Its argument is the publisher the
#: repository writes through (the guide's ``pool``): events go to Kafka, and the
#: event store and projections make them rows.
FrameMetadataRepository = FrameRepository
