"""The ``frames`` projection's store in memory: the same fold and the same checks
as the PostgreSQL store (:mod:`projections.store`), with dicts for tables.

For tests of what drives a store (the worker's handling of conflicts and
swapped-in generations) without a database; it passes the same contract
(``tests/support/projection_store_contract.py``). An apply runs without
awaiting, so, on one event loop, it is all or nothing as a transaction is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from projections.fold import (
    BatchFold,
    FailureKey,
    FailureStat,
    FrameKey,
    FrameRow,
    Merged,
    Rollup,
    StageCameraKey,
    StageHourKey,
    StageKey,
    StageRow,
    failure_totals,
    merge_batch,
)
from projections.ports import (
    ApplyResult,
    Positions,
    ProjectionStore,
    TopicPartitionKey,
    check_expected_checkpoints,
    check_live_generation,
)


@dataclass
class Generation:
    """One generation's tables: rows, rollups (by (camera, hour), (stage, hour)
    and (camera, stage, hour), and the failure rollup; rows kept when they sum
    to zero, as in the database) and checkpoints."""

    frames: dict[FrameKey, FrameRow] = field(default_factory=dict)
    stages: dict[StageKey, StageRow] = field(default_factory=dict)
    frame_stats: dict[tuple[str, datetime], Rollup] = field(default_factory=dict)
    stage_stats: dict[StageHourKey, Rollup] = field(default_factory=dict)
    stage_camera_stats: dict[StageCameraKey, Rollup] = field(default_factory=dict)
    failure_stats: dict[FailureKey, FailureStat] = field(default_factory=dict)
    checkpoints: dict[TopicPartitionKey, int] = field(default_factory=dict)


class InMemoryProjectionStore(ProjectionStore):
    def __init__(self, *, live_generation: int = 1) -> None:
        self.live = live_generation
        self.generations: dict[int, Generation] = {live_generation: Generation()}

    def generation(self, generation: int) -> Generation:
        """A generation's tables (created empty on first use, as a rebuild creates them)."""
        return self.generations.setdefault(generation, Generation())

    def swap(self, generation: int) -> None:
        """What a rebuild's swap does: ``generation`` becomes the live one."""
        self.generation(generation)
        self.live = generation

    async def live_generation(self) -> int:
        return self.live

    async def checkpoints(self, generation: int) -> dict[TopicPartitionKey, int]:
        g = self.generations.get(generation)
        return dict(g.checkpoints) if g is not None else {}

    async def _apply_folded(
        self, batch: BatchFold, n_events: int, generation: int, positions: Positions, check_live: bool
    ) -> ApplyResult:
        if check_live:
            check_live_generation(self.live, generation)
        g = self.generation(generation)
        check_expected_checkpoints(g.checkpoints, positions)
        merged = merge_batch(batch, g.frames, g.stages)
        for f in merged.frames:
            g.frames[(f.frame_id, f.frame_timestamp)] = f
        for s in merged.stages:
            g.stages[(s.frame_id, s.frame_timestamp, s.stage, s.attempt)] = s
        self._add_rollups(g, merged)
        recompute: set[FailureKey] = set()
        for fk, fd in merged.failure_deltas.items():
            g.failure_stats.setdefault(fk, FailureStat()).merge(fd)
            if fd.recompute:
                recompute.add(fk)
        if recompute:
            self._recompute_failures(g, recompute)
        for tp, (_, new) in positions.items():
            g.checkpoints[tp] = new
        return ApplyResult(len(merged.frames), len(merged.stages), n_events)

    def _add_rollups(self, g: Generation, merged: Merged) -> None:
        """Add a batch's deltas to the additive rollups."""
        additive: list[tuple[dict[Any, Rollup], dict[Any, Rollup]]] = [
            (g.frame_stats, merged.frame_deltas),
            (g.stage_stats, merged.stage_deltas),
            (g.stage_camera_stats, merged.stage_camera_deltas),
        ]
        for stats, deltas in additive:
            for k, d in deltas.items():
                stats.setdefault(k, Rollup()).add(d)

    def _recompute_failures(self, g: Generation, keys: set[FailureKey]) -> None:
        """Set the failure rollup groups a batch retracted failures from from the
        rows, as the PostgreSQL store does."""
        fresh = failure_totals(g.frames.values(), g.stages.values(), keys)
        for k in keys:
            g.failure_stats[k] = fresh.get(k) or FailureStat()
