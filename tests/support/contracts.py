"""Contract tests: one abstract suite per port of :mod:`tracker.store.ports`, subclassed
once per implementation.

A subclass provides the fixtures its suite takes (pytest names any it lacks):

- :class:`EventStoreContract`: ``store``, a fresh, empty :class:`EventStore`, and
  ``read_back``, what it holds now, as rows in any order.
- :class:`DeadLetterSinkContract`: ``sink``, a started :class:`DeadLetterSink`
  (stopped after the test), and ``delivered``, the dead letters it has
  delivered so far, oldest first, as ``(key, value, headers)``.

The in-memory implementations run them in ``tests/unit``, the PostgreSQL and
Kafka adapters in ``tests/integration``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tracker import events as ev
from tracker.errors import (
    BrokerError,
    DecodeError,
    FramingError,
    StorageError,
    UnknownSchemaError,
    ValidationError,
)
from tracker.store.batch import store_batch
from tracker.store.lifecycle import AFTER_TERMINAL
from tracker.store.ports import COLUMNS, INSERTED_FIELDS, AppendResult, DeadLetterSink, EventRow, EventStore
from tracker.store.postgres import record_to_row

ReadBack = Callable[[], Awaitable[list[EventRow]]]
Delivered = Callable[[], Awaitable[list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]]]

# A fixed capture day, far from today's partitions.
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAY = T0.date()


def row_of(event: ev.FrameEvent, *, offset: int = 0, trace: tuple[str, str] | None = None) -> EventRow:
    """The row the consumer would build for ``event``, fetched at ``offset``."""
    return record_to_row(
        event.to_record(),
        topic="t.frames.processing",
        partition=1,
        offset=offset,
        fingerprint=b"\x8f\x01\x02\x03\x04\x05\x06\x07",
        trace_id=trace[0] if trace else None,
        span_id=trace[1] if trace else None,
    )


def _common(frame_id: str, *, captured: datetime = T0, after_s: float = 0.0) -> dict[str, Any]:
    return dict(
        frame_id=frame_id,
        camera_id="cam-1",
        frame_timestamp=captured,
        occurred_at=captured + timedelta(seconds=after_s),
        producer="contract",
    )


def named(row: EventRow) -> dict[str, Any]:
    return dict(zip(COLUMNS, row, strict=True))


def _by_id(rows: Iterable[EventRow]) -> list[EventRow]:
    return sorted(rows, key=lambda r: named(r)["event_id"])


def _inserted(result: AppendResult) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r[name] for name in INSERTED_FIELDS) for r in result.inserted)


def _fields(rows: Iterable[EventRow]) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(named(r)[name] for name in INSERTED_FIELDS) for r in rows)


@dataclass
class Decoded:
    """A decoded batch as :func:`store_batch` takes it."""

    good: list[dict[str, Any]] = field(default_factory=list)
    rows: list[EventRow] = field(default_factory=list)

    @classmethod
    def of(cls, *events: ev.FrameEvent) -> Decoded:
        good = [e.to_record() for e in events]
        return cls(good, [row_of(e) for e in events])


class EventStoreContract:
    """What every :class:`~tracker.store.ports.EventStore` does (fixtures: ``store``, ``read_back``)."""

    async def test_append_stores_every_row_and_gives_back_what_it_inserted(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        rows = [
            row_of(ev.FrameCaptured(**_common("f1"), attributes={"lens": "wide"})),
            row_of(ev.StageCompleted(**_common("f1", after_s=1), stage="detect", duration_ms=12.5), offset=1),
            row_of(
                ev.ProcessingCompleted(**_common("f1", after_s=2), duration_ms=40.0),
                trace=("a" * 32, "b" * 16),
            ),
        ]
        await store.ensure_partitions({DAY})
        result = await store.append(rows)
        assert result.duplicates == 0
        assert _inserted(result) == _fields(rows)
        assert _by_id(await read_back()) == _by_id(rows)

    async def test_a_redelivered_event_is_a_duplicate_and_the_first_row_stays(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        first = [row_of(ev.FrameCaptured(**_common(f"f{i}")), offset=i) for i in range(3)]
        await store.ensure_partitions({DAY})
        await store.append(first)
        new = row_of(ev.FrameCaptured(**_common("f9")), offset=9)
        # Redelivered from elsewhere (a replay): same event, other coordinates.
        again = [tuple({**named(first[0]), "offset": 100}.values()), first[1], new]
        result = await store.append(again)
        assert (_inserted(result), result.duplicates) == (_fields([new]), 2)
        assert _by_id(await read_back()) == _by_id([*first, new])

    async def test_an_event_twice_in_one_append_is_stored_once(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        a, b = (row_of(ev.FrameCaptured(**_common(f"f{i}"))) for i in range(2))
        await store.ensure_partitions({DAY})
        result = await store.append([a, b, a])
        assert (_inserted(result), result.duplicates) == (_fields([a, b]), 1)
        assert _by_id(await read_back()) == _by_id([a, b])

    async def test_an_inline_step_runs_once_inside_the_append(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        rows = [row_of(ev.FrameCaptured(**_common(f"f{i}")), offset=i) for i in range(2)]
        calls: list[Any] = []

        async def step(conn: Any) -> None:
            calls.append(conn)

        await store.ensure_partitions({DAY})
        result = await store.append(rows, inline=step)
        assert len(calls) == 1 and len(result.inserted) == 2
        assert _by_id(await read_back()) == _by_id(rows)

    async def test_a_failing_inline_step_stores_nothing_of_its_append(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        kept = row_of(ev.FrameCaptured(**_common("f0")))
        await store.ensure_partitions({DAY})
        await store.append([kept])

        async def step(conn: Any) -> None:
            raise RuntimeError("the read model refused the batch")

        lost = row_of(ev.FrameCaptured(**_common("f1")), offset=1)
        with pytest.raises(RuntimeError, match="refused"):
            await store.append([lost], inline=step)
        assert await read_back() == [kept]

    async def test_an_empty_append_stores_nothing(self, store: EventStore, read_back: ReadBack) -> None:
        assert await store.append([]) == AppendResult([], 0)
        assert await read_back() == []

    async def test_a_row_of_a_day_not_made_ready_is_refused_with_its_whole_batch(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        await store.ensure_partitions({DAY})
        await store.ensure_partitions({DAY})  # again: harmless
        ready = row_of(ev.FrameCaptured(**_common("f1")))
        later = row_of(ev.FrameCaptured(**_common("f2", captured=T0 + timedelta(days=2))))
        with pytest.raises(StorageError) as caught:
            await store.append([ready, later])
        assert caught.value.sqlstate == "23514" and not caught.value.retriable
        assert await read_back() == []

    async def test_stored_terminals_are_the_terminal_events_of_the_frames_asked_captured_in_the_window(
        self, store: EventStore
    ) -> None:
        last = T0 + timedelta(hours=1)
        completed = ev.ProcessingCompleted(**_common("a", after_s=5))
        conflicting = ev.ProcessingFailed(**_common("a", after_s=6), error_type="E", error_message="m")
        # An upper-case id is answered in PostgreSQL's canonical (lower-case) form.
        failed = ev.ProcessingFailed(
            **_common("b", captured=last, after_s=1),
            error_type="E",
            error_message="m",
            event_id="0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9",
        )
        rows = [
            row_of(completed),
            row_of(conflicting),
            row_of(ev.StageStarted(**_common("a", after_s=1), stage="detect")),
            row_of(failed),
            row_of(ev.FrameCaptured(**_common("c"))),  # no terminal event
            row_of(ev.ProcessingCompleted(**_common("d", captured=last + timedelta(microseconds=1)))),
            row_of(ev.ProcessingCompleted(**_common("e"))),  # not asked
        ]
        await store.ensure_partitions({DAY})
        await store.append(rows)
        got = await store.stored_terminals(["a", "b", "c", "d", "x"], T0, last)
        assert {k: sorted(v) for k, v in got.items()} == {
            "a": sorted(
                (e.event_id, e.event_type, ev.to_micros(e.occurred_at)) for e in (completed, conflicting)
            ),
            "b": [(failed.event_id.lower(), failed.event_type, ev.to_micros(failed.occurred_at))],
        }
        assert await store.stored_terminals([], T0, last) == {}

    async def test_store_batch_flags_an_event_after_a_stored_terminal(
        self, store: EventStore, read_back: ReadBack
    ) -> None:
        done = ev.ProcessingCompleted(**_common("f1", after_s=1))
        late = ev.StageStarted(**_common("f1", after_s=2), stage="late")
        result, flagged = await store_batch(store, Decoded.of(done))
        assert (len(result.inserted), flagged) == (1, [])
        result, flagged = await store_batch(store, Decoded.of(late, done))
        assert (len(result.inserted), result.duplicates) == (1, 1)
        assert [r["event_id"] for r in flagged] == [late.event_id]
        flags = {named(r)["event_id"]: named(r)["lifecycle_flag"] for r in await read_back()}
        assert flags == {done.event_id: None, late.event_id: AFTER_TERMINAL}


@dataclass(frozen=True)
class Fetched:
    """A record as fetched from an event topic (a :class:`~tracker.store.ports.SourceRecord`)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def error_headers(error: DecodeError, message: bytes, msg: Fetched) -> list[tuple[str, bytes]]:
    """The ``tracker.error.*`` headers a dead letter of ``msg`` ends with, spelled out."""
    return [
        ("tracker.error.class", type(error).__name__.encode()),
        ("tracker.error.message", message),
        ("tracker.error.topic", msg.topic.encode()),
        ("tracker.error.partition", str(msg.partition).encode()),
        ("tracker.error.offset", str(msg.offset).encode()),
        ("tracker.error.stage", error.stage.encode()),
    ]


class DeadLetterSinkContract:
    """What every :class:`~tracker.store.ports.DeadLetterSink` does (fixtures: ``sink``, ``delivered``)."""

    async def test_every_dead_letter_keeps_its_record_and_says_what_was_wrong_in_order(
        self, sink: DeadLetterSink, delivered: Delivered
    ) -> None:
        topic = "t.frames.processing"
        framing = FramingError("not an Avro single-object encoding")
        unknown = UnknownSchemaError("fingerprint 0101010101010101 is not a kept schema")
        invalid = ValidationError("é" * 2000)  # the message is cut to 1024 characters
        traced = Fetched(
            topic, 3, 17, b"cam-1", b"\x00junk", (("traceparent", b"00-ab-cd-01"), ("x", b"\xff"))
        )
        keyless = Fetched(topic, 0, 5, None, b"")
        # Dead-lettered before and replayed: its old error headers give way to the new ones.
        replayed = Fetched(
            topic, 1, 2, b"cam-2", b"\x01", (("tracker.error.class", b"Old"), ("x-origin", b"replay"))
        )
        await sink.send_all([(traced, framing), (keyless, unknown)])
        await sink.send_all([(replayed, invalid)])
        assert await delivered() == [
            (
                b"cam-1",
                b"\x00junk",
                [*traced.headers, *error_headers(framing, b"not an Avro single-object encoding", traced)],
            ),
            (None, b"", error_headers(unknown, str(unknown).encode(), keyless)),
            (
                b"cam-2",
                b"\x01",
                [("x-origin", b"replay"), *error_headers(invalid, ("é" * 1024).encode(), replayed)],
            ),
        ]

    async def test_a_send_to_a_stopped_sink_raises_broker_error_and_delivers_nothing(
        self, sink: DeadLetterSink, delivered: Delivered
    ) -> None:
        first = Fetched("t.frames.camera", 0, 1, b"k", b"\x00")
        await sink.send_all([(first, FramingError("short"))])
        await sink.stop()
        with pytest.raises(BrokerError):
            await sink.send_all([(Fetched("t.frames.camera", 0, 2, b"k", b"\x00"), FramingError("short"))])
        assert [value for _, value, _ in await delivered()] == [b"\x00"]
