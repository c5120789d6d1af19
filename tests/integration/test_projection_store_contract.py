"""The PostgreSQL projection store passes the contract
(tests/support/projection_store_contract.py), against the local stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.projection_store_contract import PostgresProjectionStoreContract
from tracker.adapters.postgres import connect_pool
from tracker.config import Settings


class TestPostgresProjectionStore(PostgresProjectionStoreContract):
    @pytest.fixture
    async def pool(self, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
        pool = await connect_pool(settings.database, max_size=2)
        try:
            yield pool
        finally:
            await pool.close()
