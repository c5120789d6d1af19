from __future__ import annotations

import asyncpg
import pytest

from tracker.adapters.postgres import load_migrations, migrate
from tracker.errors import MigrationError


async def test_migrate_twice_is_a_no_op(db: asyncpg.Connection) -> None:
    # The fixture already migrated once.
    report = await migrate(db)
    assert report.applied == [] and report.already == len(load_migrations())
    cols = {
        r["column_name"]
        for r in await db.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'frame_events'"
        )
    }
    assert {
        "event_id",
        "event_type",
        "frame_id",
        "camera_id",
        "frame_timestamp",
        "occurred_at",
        "recorded_at",
        "producer",
        "data",
        "trace_id",
        "span_id",
        "topic",
        "partition",
        "offset",
        "schema_fingerprint",
    } <= cols


async def test_changed_migration_is_refused(db: asyncpg.Connection, tmp_path) -> None:
    import shutil

    from tracker.adapters.postgres import SQL_DIR

    for f in SQL_DIR.glob("*.sql"):
        shutil.copy(f, tmp_path)
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(db, tmp_path)


async def test_partitions_are_created_by_day(db: asyncpg.Connection) -> None:
    created = await db.fetchval(
        "SELECT tracker_ensure_partitions('frame_events', '2026-03-01T12:00Z', '2026-03-03T00:00Z')"
    )
    assert created == 3
    again = await db.fetchval("SELECT tracker_ensure_partitions('frame_events', '2026-03-01', '2026-03-03')")
    assert again == 0
    names = [
        r["relname"]
        for r in await db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'frame_events'::regclass ORDER BY 1"
        )
    ]
    assert names == ["frame_events_p20260301", "frame_events_p20260302", "frame_events_p20260303"]
