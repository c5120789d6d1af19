"""The port of the ``frames`` projection's store: folded batches in, with their checkpoints.

A small ABC with what crosses it typed here, so that the in-memory store
(:mod:`projections.in_memory`, for tests of what drives a store) can stand in
for the PostgreSQL adapter (:mod:`projections.store`). The contract both pass
is ``tests/contract/projection_store.py``.

Nothing here does I/O or imports a driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from projections.fold import BatchFold, ProjEvent
from tracker.errors import CheckpointConflict, GenerationChanged

#: A Kafka partition: ``(topic, partition)``.
TopicPartitionKey = tuple[str, int]
#: Per partition of a batch: ``(the checkpoint the writer expects stored, or None
#: for none yet; the checkpoint to store)``.
Positions = Mapping[TopicPartitionKey, tuple[int | None, int]]


def check_live_generation(live: int, generation: int) -> None:
    """A writer that checks the live generation finds ``generation`` swapped out."""
    if live != generation:
        raise GenerationChanged(f"live generation is now {live}")


def check_expected_checkpoints(stored: Mapping[TopicPartitionKey, int], positions: Positions) -> None:
    """Every partition of ``positions`` has the checkpoint its writer expects stored."""
    for (topic, partition), (expected, _) in positions.items():
        at = stored.get((topic, partition))
        if at != expected:
            raise CheckpointConflict(f"{topic}[{partition}]: stored checkpoint {at}, expected {expected}")


@dataclass(frozen=True)
class ApplyResult:
    """What one apply did: frame and stage rows changed, events it was given."""

    frames: int
    stages: int
    events: int


class ProjectionStore(ABC):
    """A projection's rows, rollups and checkpoints, per generation.

    A rebuild fills a new generation while the live one keeps being written,
    then swaps it in. The rows a batch changes and the checkpoints it moves are
    written together or not at all, so a replayed batch is recognised by its
    checkpoints, and a batch applied twice changes nothing (the fold is
    idempotent on event ids).
    """

    @abstractmethod
    async def live_generation(self) -> int:
        """The generation readers see, and the live worker writes."""

    @abstractmethod
    async def checkpoints(self, generation: int) -> dict[TopicPartitionKey, int]:
        """The next offset to apply, per partition that ``generation`` has one for."""

    async def apply(
        self,
        events: Sequence[ProjEvent],
        *,
        generation: int,
        positions: Positions | None = None,
        check_live: bool = False,
    ) -> ApplyResult:
        """Fold ``events`` into ``generation`` in one transaction.

        ``positions`` maps each (topic, partition) of the batch to
        ``(expected stored checkpoint, new checkpoint)``; a mismatch raises
        :class:`CheckpointConflict` and nothing is written.
        """
        return await self.apply_folded(
            BatchFold().extend(events),
            len(events),
            generation=generation,
            positions=positions,
            check_live=check_live,
        )

    async def apply_folded(
        self,
        batch: BatchFold,
        n_events: int,
        *,
        generation: int,
        positions: Positions | None = None,
        check_live: bool = False,
    ) -> ApplyResult:
        """:meth:`apply` for ``n_events`` events already folded into ``batch``
        (the CPU part, which a caller may do while the previous batch is written).

        With ``check_live``, a ``generation`` that is no longer the live one
        raises :class:`GenerationChanged` and nothing is written: a rebuild was
        swapped in, and the writer must continue from the new generation's
        checkpoints.
        """
        return await self._apply_folded(batch, n_events, generation, positions or {}, check_live)

    @abstractmethod
    async def _apply_folded(
        self, batch: BatchFold, n_events: int, generation: int, positions: Positions, check_live: bool
    ) -> ApplyResult:
        """What a store implements of :meth:`apply_folded` (``positions`` empty for none):
        the checks (:func:`check_live_generation` if ``check_live``, then
        :func:`check_expected_checkpoints`), then the rows and the checkpoints, all
        in one transaction."""
