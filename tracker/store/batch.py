"""Storing one decoded batch: what the event-store consumer asks of any
:class:`~tracker.store.ports.EventStore`, in order.

Partitions first (in their own short transactions, see ``sql/001``), then the
lifecycle flags, judged against the terminal events already stored, then one
idempotent append.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from tracker.domain import STAGE_EVENT_TYPES
from tracker.events import from_micros
from tracker.store.lifecycle import TERMINAL, flag_batch
from tracker.store.ports import AppendResult, EventRow, EventStore, InlineStep, StoredTerminals

T = TypeVar("T")


class DecodedRows(Protocol):
    """A decoded batch (:class:`tracker.store.consumer.DecodedBatch`): the valid
    records, and their rows index for index."""

    @property
    def good(self) -> list[dict[str, Any]]: ...
    @property
    def rows(self) -> list[EventRow]: ...


async def _direct(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def store_batch(
    store: EventStore,
    batch: DecodedRows,
    *,
    run: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] = _direct,
    inline: InlineStep | None = None,
) -> tuple[AppendResult, list[dict[str, Any]]]:
    """The event store's steps for one decoded batch: partitions, lifecycle
    flags against stored terminal events, idempotent append.

    ``run`` wraps each step (the consumer pauses fetching and retries there);
    ``inline`` runs inside the append's transaction (an inline projection).
    Returns the append result and the records flagged as lifecycle violations.
    """
    good = batch.good
    first_us = min(r["frame_timestamp"] for r in good)
    last_us = max(r["frame_timestamp"] for r in good)
    days = {from_micros(r["frame_timestamp"]).date() for r in good}
    await run(lambda: store.ensure_partitions(days))
    frames = sorted(
        {r["frame_id"] for r in good if r["event_type"] in TERMINAL or r["event_type"] in STAGE_EVENT_TYPES}
    )
    stored_terminals: StoredTerminals = {}
    if frames:
        stored_terminals = await run(
            lambda: store.stored_terminals(frames, from_micros(first_us), from_micros(last_us))
        )
    flag_batch(good, stored_terminals)
    rows = list(batch.rows)
    for i, rec in enumerate(good):
        if rec.get("lifecycle_flag"):
            rows[i] = (*rows[i][:-1], rec["lifecycle_flag"])
    result = await run(lambda: store.append(rows, inline=inline))
    return result, [r for r in good if r.get("lifecycle_flag")]
