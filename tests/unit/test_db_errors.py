"""Which driver errors a worker waits out, and which it reports."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import asyncpg
import pytest

from tests.support.certificates import make_ca
from tracker.adapters.postgres import _ssl_arg, call_db, translate
from tracker.config import DatabaseSettings
from tracker.errors import ConfigError, DatabaseUnavailable, StorageError


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


def test_an_untrusted_certificate_is_reported_not_waited_out() -> None:
    """A server whose certificate the CA file does not vouch for will not be
    trusted by waiting: the worker must stop at once, saying so."""
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_message = "unable to get local issuer certificate"
    err = translate(e)
    assert type(err) is StorageError and not err.retriable
    assert str(err) == "the database's TLS certificate is not trusted: unable to get local issuer certificate"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a CA")
def test_verify_full_trusts_the_root_certificate_it_is_given(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "test CA")
    ctx = _ssl_arg(DatabaseSettings(sslmode="verify-full", sslrootcert=str(ca)))
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test CA"),),)]
    verify_ca = _ssl_arg(DatabaseSettings(sslmode="verify-ca", sslrootcert=str(ca)))
    assert not verify_ca.check_hostname and verify_ca.verify_mode == ssl.CERT_REQUIRED
    assert _ssl_arg(DatabaseSettings(sslmode="require", sslrootcert=str(ca))) == "require"


def test_a_missing_root_certificate_is_a_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TRACKER_DATABASE_SSLROOTCERT .*No such file"):
        _ssl_arg(DatabaseSettings(sslmode="verify-full", sslrootcert=str(tmp_path / "nope.pem")))
