"""The ports of the event-store consumer: where events are stored, where dead letters go.

Each port is a small ABC with what crosses it typed here, so a second
implementation (the in-memory ones of :mod:`tracker.store.in_memory`, used by tests)
can stand in for the adapter (:mod:`tracker.store.postgres` for PostgreSQL,
:mod:`tracker.adapters.dead_letters` for Kafka). ``tests/support/contracts.py`` holds the one
contract test suite per port that every implementation passes.

Nothing here does I/O or imports a driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from tracker.errors import DecodeError

# -- The event store ----------------------------------------------------------


#: The columns of ``frame_events`` in the order of an :data:`EventRow`'s values
#: (the order COPY writes them in).
COLUMNS = (
    "event_id",
    "event_type",
    "frame_id",
    "camera_id",
    "frame_timestamp",
    "occurred_at",
    "producer",
    "stage",
    "attempt",
    "duration_ms",
    "error_type",
    "error_message",
    "data",
    "trace_id",
    "span_id",
    "topic",
    "partition",
    "offset",
    "schema_fingerprint",
    "lifecycle_flag",
)

#: One ``frame_events`` row: its values in :data:`COLUMNS` order, as
#: :func:`tracker.store.postgres.record_to_row` builds it.
#:
#: A plain tuple, not a named type, because the consumer builds one per event
#: and a named one was measured slower on both ends: a ``NamedTuple`` costs about
#: 0.3 µs more a row to build (3% of decoding a record) and asyncpg's COPY encodes
#: it 1 µs slower than an exact tuple (0.3 µs once turned back into one). Code off
#: the hot path reads a row by name with ``dict(zip(COLUMNS, row))``.
EventRow = tuple[Any, ...]


#: What :meth:`EventStore.append` gives back of each row it inserted (what the
#: consumer's metrics read).
INSERTED_FIELDS = ("event_type", "camera_id", "stage", "duration_ms", "error_type", "trace_id", "span_id")


class InsertedRow(Protocol):
    """An inserted row, readable by the names of :data:`INSERTED_FIELDS`
    (a database record, or a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class AppendResult:
    """The rows an append inserted, and how many of its rows were already stored."""

    inserted: list[InsertedRow]
    duplicates: int


#: Terminal events already stored, by frame id: ``(event_id, event_type,
#: occurred_at in microseconds)`` each, as :func:`tracker.store.lifecycle.flag_batch` takes them.
StoredTerminals = dict[str, list[tuple[str, str, int]]]


class EventStore(ABC):
    """``frame_events``: append-only, idempotent on the event (its id and capture time)."""

    @abstractmethod
    async def ensure_partitions(self, days: set[date]) -> None:
        """Make the (UTC) days ready to take rows: call before appending rows captured on them."""

    @abstractmethod
    async def stored_terminals(
        self, frame_ids: Sequence[str], first: datetime, last: datetime
    ) -> StoredTerminals:
        """Terminal events already stored for these frames, of those captured in [first, last]."""

    @abstractmethod
    async def append(self, rows: Sequence[EventRow], *, inline: InlineStep | None = None) -> AppendResult:
        """Store the rows in one transaction, all or none; already-stored events
        (a redelivery, or twice in ``rows``) are skipped and counted as duplicates.

        ``inline`` runs inside that transaction, after the rows are in (with the
        transaction's connection; ``None`` for a store without one): what it
        writes commits with the rows or not at all."""


#: A step an append runs inside its transaction, given the transaction's connection.
InlineStep = Callable[[Any], Awaitable[None]]


class InlineProjection(ABC):
    """A read model kept in the event store's own transaction (an *inline projection*).

    The event-store consumer then fetches, decodes and commits each event once
    for both the store and the read model: :meth:`prepare` folds a decoded batch
    (CPU only, while the previous batch is written), :meth:`apply` writes the
    fold and the read model's checkpoints with the append. Re-applying a batch
    (a redelivery) must change nothing: the fold is idempotent on event ids.
    """

    @abstractmethod
    async def open(self, pool: Any) -> None:
        """Once, when the consumer has started: the consumer's database pool."""

    @abstractmethod
    def prepare(self, records: Sequence[dict[str, Any]], rows: Sequence[EventRow]) -> Any:
        """Fold the batch's valid records (``rows`` are their ``frame_events`` rows, index for index)."""

    @abstractmethod
    async def before(self, prepared: Any) -> None:
        """Outside the append's transaction, before it: slow, rare set-up that
        the apply would otherwise do under the transaction's locks (new partitions)."""

    @abstractmethod
    async def apply(
        self,
        conn: Any,
        prepared: Any,
        positions: dict[tuple[str, int], int],
        partitions: Collection[tuple[str, int]] = (),
    ) -> None:
        """Inside the append's transaction: write the fold into the live read model
        and move its checkpoints to ``positions`` (the next offset per partition).
        ``partitions`` are all the partitions of the consumed topics (the cluster's
        metadata), for a read model that waits for every one of them (the anomaly
        detector's watermark), including those no batch has carried yet."""


# -- The dead-letter sink -----------------------------------------------------

ERROR_PREFIX = "tracker.error."
MAX_ERROR_MESSAGE = 1024


class SourceRecord(Protocol):
    """The record that could not be decoded, as it was fetched (a Kafka consumer record)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def dead_letter_headers(msg: SourceRecord, error: DecodeError) -> list[tuple[str, bytes]]:
    """The record's own headers (minus ``tracker.error.*`` ones of an earlier
    dead-lettering), then what was wrong and where the record came from."""
    headers = [(k, v) for k, v in (msg.headers or ()) if not k.startswith(ERROR_PREFIX)]
    headers += [
        ("tracker.error.class", type(error).__name__.encode()),
        ("tracker.error.message", str(error)[:MAX_ERROR_MESSAGE].encode("utf-8", "replace")),
        ("tracker.error.topic", msg.topic.encode()),
        ("tracker.error.partition", str(msg.partition).encode()),
        ("tracker.error.offset", str(msg.offset).encode()),
        ("tracker.error.stage", error.stage.encode()),
    ]
    return headers


class DeadLetterSink(ABC):
    """Where records that cannot be decoded go, byte for byte, with
    :func:`dead_letter_headers`; started before the first send, stopped after the last."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def send_all(self, dead: Sequence[tuple[SourceRecord, DecodeError]]) -> None:
        """Deliver a dead letter for each ``(record, error)``, in order, and
        return once all are durable: the consumer commits a record's offset only
        after this. Raises :class:`~tracker.errors.BrokerError` when the sink
        cannot take them."""
