"""Which driver errors a worker waits out, and which it reports."""

from __future__ import annotations

import asyncpg
import pytest

from tracker.adapters.postgres import call_db, translate
from tracker.errors import DatabaseUnavailable, StorageError


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        # What a pool's reset of a connection the server ended mid-transaction raises.
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2)"),
    ],
)
def test_a_lost_or_restarting_database_is_waited_out(error: BaseException) -> None:
    assert isinstance(translate(error), DatabaseUnavailable)


def test_bad_data_is_reported_not_retried() -> None:
    err = translate(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert type(err) is StorageError and err.sqlstate == "23505"


async def test_call_db_translates_what_escapes_the_driver() -> None:
    async def boom() -> None:
        raise asyncpg.exceptions.InternalClientError("cannot switch to state 15")

    with pytest.raises(DatabaseUnavailable):
        await call_db(boom)
