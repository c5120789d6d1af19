"""The PostgreSQL projection store passes the contract
(tests/support/projection_store_contract.py) on TimescaleDB too, where every
generation's tables are hypertables.

The module has a harness of its own (``fresh_timescale``), and each test swaps
in an empty generation of its own: the tests neither see each other's rows nor
change the shared harness's projection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.projection_store_contract import PostgresGenerations, PostgresProjectionStoreContract
from tests.timescale.conftest import MigratedServer
from tracker.adapters.postgres import connect_pool


class TestTimescaleProjectionStore(PostgresProjectionStoreContract):
    @pytest.fixture
    async def pool(self, fresh_timescale: MigratedServer) -> AsyncIterator[asyncpg.Pool]:
        # One connection: the harness serves one at a time.
        pool = await connect_pool(fresh_timescale.server.settings().database, max_size=1)
        try:
            generations = PostgresGenerations(pool)
            await generations.swap_in(await generations.new_generation())
            yield pool
        finally:
            await pool.close()
