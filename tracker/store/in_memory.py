"""The ports of :mod:`tracker.store.ports` without services: an event store in a dict,
a dead-letter sink in a list.

They answer as the adapters do (``tests/support/contracts.py`` runs one suite
against both), so a test of what sits above a port needs neither PostgreSQL nor
Kafka, and can make a send fail at will.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from tracker.errors import BrokerError, DecodeError, StorageError
from tracker.events import to_micros
from tracker.store.lifecycle import TERMINAL
from tracker.store.ports import (
    COLUMNS,
    INSERTED_FIELDS,
    AppendResult,
    DeadLetterSink,
    EventRow,
    EventStore,
    InlineStep,
    InsertedRow,
    SourceRecord,
    StoredTerminals,
    dead_letter_headers,
)


class InMemoryEventStore(EventStore):
    """``frame_events`` as plain PostgreSQL keeps it: one row per primary key
    (event id, capture time), so a redelivered event is a duplicate; a day
    takes rows only once :meth:`ensure_partitions` has made it ready; an append
    stores all its rows or, on an error, none."""

    def __init__(self) -> None:
        self.rows: dict[tuple[uuid.UUID, datetime], EventRow] = {}
        self.partitions: set[date] = set()

    async def ensure_partitions(self, days: set[date]) -> None:
        self.partitions |= days

    async def stored_terminals(
        self, frame_ids: Sequence[str], first: datetime, last: datetime
    ) -> StoredTerminals:
        wanted = set(frame_ids)
        out: StoredTerminals = {}
        for (event_id, captured), row in self.rows.items():
            r = _named(row)
            if r["frame_id"] in wanted and r["event_type"] in TERMINAL and first <= captured <= last:
                # str(UUID): the canonical text PostgreSQL gives for event_id::text.
                out.setdefault(r["frame_id"], []).append(
                    (str(event_id), r["event_type"], to_micros(r["occurred_at"]))
                )
        return out

    async def append(self, rows: Sequence[EventRow], *, inline: InlineStep | None = None) -> AppendResult:
        # Every row is checked before any is stored: the append is one transaction.
        keyed = [(self._key(_named(row)), row) for row in rows]
        added: dict[tuple[uuid.UUID, datetime], EventRow] = {}
        inserted: list[InsertedRow] = []
        for key, row in keyed:
            if key not in self.rows and key not in added:
                added[key] = row
                r = _named(row)
                inserted.append({name: r[name] for name in INSERTED_FIELDS})
        if inline is not None:
            await inline(None)  # raises: nothing is stored, as a rolled-back transaction
        self.rows.update(added)
        return AppendResult(inserted, len(rows) - len(inserted))

    def _key(self, row: dict[str, Any]) -> tuple[uuid.UUID, datetime]:
        """The row's primary key; what PostgreSQL refuses, refused with its SQLSTATE."""
        try:
            event_id = uuid.UUID(row["event_id"])
        except ValueError:
            raise StorageError(f"event_id {row['event_id']!r} is not a UUID", sqlstate="22P02") from None
        captured: datetime = row["frame_timestamp"]
        if captured.astimezone(UTC).date() not in self.partitions:
            raise StorageError(f"no partition of frame_events for {captured.isoformat()}", sqlstate="23514")
        return event_id, captured


def _named(row: EventRow) -> dict[str, Any]:
    return dict(zip(COLUMNS, row, strict=True))


@dataclass(frozen=True)
class Letter:
    """A dead letter as the sink took it."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class InMemoryDeadLetterSink(DeadLetterSink):
    """Dead letters in :attr:`letters`, in the order sent. A send raises
    :class:`~tracker.errors.BrokerError` (retriable, as the Kafka sink's does)
    while the sink is not started or :attr:`unavailable` is set."""

    def __init__(self) -> None:
        self.letters: list[Letter] = []
        self.unavailable = False
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False

    async def send_all(self, dead: Sequence[tuple[SourceRecord, DecodeError]]) -> None:
        if not dead:
            return
        if not self._started or self.unavailable:
            state = "unavailable" if self._started else "not started"
            raise BrokerError(f"dead-letter sink {state}", retriable=True)
        self.letters += [Letter(m.key, m.value, tuple(dead_letter_headers(m, e))) for m, e in dead]
