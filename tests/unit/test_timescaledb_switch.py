"""When ``migrate`` turns TimescaleDB on: on a database with no migration applied yet, where the
server offers it; never on a database already migrated without it (it would end half switched:
frame_events plain, later generations hypertables, the TimescaleDB migration recorded as done).
The connection is a stand-in that answers the two catalog questions; the decision is the logic."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tracker.adapters.postgres import _enable_timescaledb


class Catalog:
    def __init__(self, *, installed: bool, available: bool) -> None:
        self.installed, self.available = installed, available
        self.created = False

    async def fetchval(self, sql: str) -> Any:
        if "pg_extension" in sql:
            return int(self.installed)
        assert "pg_available_extensions" in sql, sql
        return int(self.available)

    async def execute(self, sql: str) -> None:
        assert sql == "CREATE EXTENSION IF NOT EXISTS timescaledb"
        self.created = self.installed = True


@pytest.mark.parametrize(
    ("installed", "available", "fresh", "on", "created"),
    [
        (False, False, True, False, False),  # plain PostgreSQL
        (False, True, True, True, True),  # a new database on a TimescaleDB server
        (True, True, False, True, False),  # migrated with it: stays on
        (False, True, False, False, False),  # migrated without it: stays off
    ],
)
async def test_timescaledb_is_turned_on_only_on_a_new_database(
    installed: bool, available: bool, fresh: bool, on: bool, created: bool, caplog: pytest.LogCaptureFixture
) -> None:
    db = Catalog(installed=installed, available=available)
    with caplog.at_level(logging.WARNING):
        assert await _enable_timescaledb(db, fresh=fresh) is on  # type: ignore[arg-type]
    assert db.created is created
    warned = "migrated without it" in caplog.text
    assert warned is (available and not installed and not fresh)
