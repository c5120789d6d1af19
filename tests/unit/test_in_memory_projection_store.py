"""The in-memory projection store passes the contract (tests/support/projection_store_contract.py),
no services needed; and each check of the contract fails a store that breaks it."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import pytest

from projections.fold import BatchFold, FailureKey, Merged, Rollup, frame_contribution
from projections.in_memory import Generation, InMemoryProjectionStore
from projections.ports import ApplyResult
from tests.support.projection_store_contract import (
    TOPIC,
    NewGeneration,
    ProjectionStoreContract,
    ReadBack,
    Snapshot,
    SwapIn,
)


def read_back_of(store: InMemoryProjectionStore) -> ReadBack:
    async def snapshot(generation: int) -> Snapshot:
        g = store.generations.get(generation, Generation())
        return Snapshot.of(
            g.frames.values(),
            g.stages.values(),
            g.frame_stats,
            g.stage_stats,
            g.failure_stats,
            g.stage_camera_stats,
        )

    return snapshot


def new_generation_of(store: InMemoryProjectionStore) -> NewGeneration:
    async def create() -> int:
        generation = max(store.generations) + 1
        store.generation(generation)
        return generation

    return create


def swap_in_of(store: InMemoryProjectionStore) -> SwapIn:
    async def swap(generation: int) -> None:
        store.swap(generation)

    return swap


class TestInMemoryProjectionStore(ProjectionStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryProjectionStore:
        return InMemoryProjectionStore()

    @pytest.fixture
    def read_back(self, store: InMemoryProjectionStore) -> ReadBack:
        return read_back_of(store)

    @pytest.fixture
    def new_generation(self, store: InMemoryProjectionStore) -> NewGeneration:
        return new_generation_of(store)

    @pytest.fixture
    def swap_in(self, store: InMemoryProjectionStore) -> SwapIn:
        return swap_in_of(store)


# ---- each check can fail ---------------------------------------------------------


class _Defective(InMemoryProjectionStore):
    """The in-memory store with one defect."""

    def __init__(self, defect: str) -> None:
        super().__init__()
        self.defect = defect

    async def apply_folded(self, batch: BatchFold, n_events: int, **kw: Any) -> ApplyResult:
        generation, positions, check_live = kw["generation"], kw.get("positions"), kw.get("check_live", False)
        sound = super().apply_folded
        g = self.generation(generation)
        positions = dict(positions or {})
        if self.defect == "ignores the expected checkpoints":
            positions = {tp: (g.checkpoints.get(tp), new) for tp, (_, new) in positions.items()}
        elif self.defect == "ignores the live generation":
            check_live = False
        elif self.defect == "forgets the checkpoints":
            positions = {}
        elif self.defect == "writes before checking":
            await sound(batch, n_events, generation=generation)
            batch = BatchFold()
        result = await sound(
            batch, n_events, generation=generation, positions=positions, check_live=check_live
        )
        if self.defect == "counts a redelivery in the rollups" and not result.frames:
            for row in g.frames.values():
                k, r = frame_contribution(row)
                g.frame_stats.setdefault(k, Rollup()).add(r)
        return result

    def _add_rollups(self, g: Generation, merged: Merged) -> None:
        if self.defect == "forgets the per-camera-and-stage rollup":
            merged = replace(merged, stage_camera_deltas={})
        elif self.defect == "never takes a stage run out of a camera's row":
            kept = {k: d for k, d in merged.stage_camera_deltas.items() if d.counts.get("runs", 0) >= 0}
            merged = replace(merged, stage_camera_deltas=kept)
        super()._add_rollups(g, merged)

    def _recompute_failures(self, g: Generation, keys: set[FailureKey]) -> None:
        if self.defect == "only merges failures, never recomputes a group":
            for k in keys:
                g.failure_stats[k].recompute = False
        else:
            super()._recompute_failures(g, keys)


@pytest.mark.parametrize(
    ("defect", "check"),
    [
        ("ignores the expected checkpoints", "test_a_stale_expected_checkpoint_conflicts_and_writes_nothing"),
        ("writes before checking", "test_a_stale_expected_checkpoint_conflicts_and_writes_nothing"),
        ("ignores the live generation", "test_a_checked_batch_for_a_generation_swapped_out_changes_nothing"),
        ("writes before checking", "test_a_checked_batch_for_a_generation_swapped_out_changes_nothing"),
        ("forgets the checkpoints", "test_checkpoints_are_written_with_the_rows"),
        ("forgets the checkpoints", "test_a_generation_is_written_apart_from_the_live_one"),
        ("counts a redelivery in the rollups", "test_a_redelivered_batch_changes_nothing"),
        (
            "only merges failures, never recomputes a group",
            "test_the_failure_rollup_equals_one_recomputed_from_the_rows",
        ),
        (
            "only merges failures, never recomputes a group",
            "test_concurrent_batches_keep_the_failure_rollup_exact",
        ),
        (
            "only merges failures, never recomputes a group",
            "test_two_writers_retracting_from_one_group_at_once",
        ),
        (
            "forgets the per-camera-and-stage rollup",
            "test_rows_applied_in_any_order_and_batches_equal_the_fold",
        ),
        ("never takes a stage run out of a camera's row", "test_a_stage_run_moves_to_the_row_of_its_camera"),
    ],
)
async def test_each_contract_check_can_fail(defect: str, check: str) -> None:
    test = getattr(ProjectionStoreContract(), check)

    def run(store: InMemoryProjectionStore) -> Awaitable[None]:
        available: dict[str, Any] = {
            "store": store,
            "read_back": read_back_of(store),
            "new_generation": new_generation_of(store),
            "swap_in": swap_in_of(store),
            "positions": {(TOPIC, 0): (None, 9)},
        }
        return test(**{name: available[name] for name in inspect.signature(test).parameters})

    await run(InMemoryProjectionStore())  # the sound store passes, as called here
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await run(_Defective(defect))
