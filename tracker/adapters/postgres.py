"""PostgreSQL plumbing: connection pools, error translation, retries, migrations.

Only this module and the adapters built on it import asyncpg. Driver errors
become :class:`~tracker.errors.StorageError` (``sqlstate`` kept); the transient
ones become :class:`~tracker.errors.DatabaseUnavailable` and are the only ones
retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from tracker.config import DatabaseSettings
from tracker.errors import ConfigError, DatabaseUnavailable, MigrationError, StorageError

log = logging.getLogger(__name__)

# The repository's sql/ folder, shipped as the package tracker.sql
# (pyproject.toml): the same code reads it from a checkout and from a wheel.
SQL_DIR: Traversable = resources.files("tracker.sql")

# SQLSTATE classes that mean "try again later", not "this data is bad":
# 08 connection exception, 53 insufficient resources, 57 operator intervention
# (admin shutdown, cannot connect now), 40001/40P01 serialization/deadlock.
_RETRIABLE_PREFIXES = ("08", "53", "57")
_RETRIABLE_CODES = {"40001", "40P01", "55P03"}

T = TypeVar("T")


def translate(e: BaseException) -> StorageError:
    """Map a driver or network error to the project's own error."""
    if isinstance(e, StorageError):
        return e
    sqlstate = getattr(e, "sqlstate", None)
    if isinstance(e, ssl_module.SSLCertVerificationError):
        # The server's certificate is not one we trust: a setting to fix, not an outage to wait out.
        return StorageError(f"the database's TLS certificate is not trusted: {e.verify_message}")
    if isinstance(e, (OSError, asyncio.TimeoutError, ConnectionError)):
        return DatabaseUnavailable(f"database unreachable: {type(e).__name__}: {e}")
    if isinstance(e, asyncpg.InterfaceError):
        # Connection closed under us, pool closing, etc.
        return DatabaseUnavailable(f"database connection lost: {e}")
    if isinstance(e, asyncpg.exceptions.InternalClientError):
        # The server ended the session mid-transaction (a shutdown) and the pool's
        # reset of that connection met its unfinished protocol state
        # (MagicStack/asyncpg#784). The pool discards the connection; the next
        # attempt gets a fresh one.
        return DatabaseUnavailable(f"database connection lost mid-operation: {e}")
    if sqlstate and (sqlstate[:2] in _RETRIABLE_PREFIXES or sqlstate in _RETRIABLE_CODES):
        return DatabaseUnavailable(f"{type(e).__name__}: {e}", sqlstate=sqlstate)
    return StorageError(f"{type(e).__name__}: {e}", sqlstate=sqlstate)


_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)


async def call_db(fn: Callable[[], Awaitable[T]]) -> T:
    """Run one database operation, translating driver errors."""
    try:
        return await fn()
    except _DRIVER_ERRORS as e:
        raise translate(e) from e


async def retry_while_unavailable(
    fn: Callable[[], Awaitable[T]],
    *,
    on_retry: Callable[[BaseException], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_wait_s: float = 5.0,
    give_up_after_s: float | None = None,
) -> T:
    """Retry ``fn`` on :class:`DatabaseUnavailable` only, with capped exponential backoff.

    By default it never gives up: a worker must not skip a batch because the
    database was down, it waits for it to come back. ``should_stop`` (a
    shutdown request) and ``give_up_after_s`` (start-up) end the wait, re-raising
    the last error.
    """

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "database unavailable (%s); retrying in %.1fs",
            exc,
            state.next_action.sleep if state.next_action else 0,
        )
        if on_retry and exc is not None:
            on_retry(exc)

    def stop(state: Any) -> bool:
        if should_stop is not None and should_stop():
            return True
        return give_up_after_s is not None and state.seconds_since_start >= give_up_after_s

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(DatabaseUnavailable),
        wait=wait_exponential(multiplier=0.2, min=0.2, max=max_wait_s),
        stop=stop,
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return await call_db(fn)
    raise AssertionError("unreachable")  # pragma: no cover


def _ssl_arg(database: DatabaseSettings) -> Any:
    """asyncpg's ``ssl`` argument. The verifying modes get a context of our own,
    trusting ``sslrootcert`` (else the system's CAs): given a context, asyncpg
    ignores the DSN's ``sslrootcert`` and ``PGSSLROOTCERT``."""
    mode = database.sslmode
    if not mode:
        return None
    if mode == "disable":
        return False
    if mode in ("verify-ca", "verify-full"):
        try:
            ctx = ssl_module.create_default_context(cafile=database.sslrootcert or None)
        except (OSError, ssl_module.SSLError) as e:
            reason = f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or e)
            raise ConfigError(f"TRACKER_DATABASE_SSLROOTCERT {database.sslrootcert}: {reason}") from None
        ctx.check_hostname = mode == "verify-full"
        return ctx
    return mode  # asyncpg understands allow / prefer / require


async def connect_pool(
    database: DatabaseSettings,
    *,
    dsn: str | None = None,
    min_size: int = 1,
    max_size: int | None = None,
    timeout: float = 10.0,
    **pool_options: Any,
) -> asyncpg.Pool:
    """Create a pool of at most ``max_size`` (default: ``database.pool_size``)
    connections to ``dsn`` (default: ``database.url``); a database that is down
    gives :class:`DatabaseUnavailable`."""
    kwargs: dict[str, Any] = {}
    ssl_arg = _ssl_arg(database)
    if ssl_arg is not None:
        kwargs["ssl"] = ssl_arg
    try:
        pool = await asyncpg.create_pool(
            dsn or database.url.get(),
            min_size=min_size,
            max_size=max_size or database.pool_size,
            timeout=timeout,
            command_timeout=120,
            **kwargs,
            **pool_options,
        )
    except _DRIVER_ERRORS as e:
        raise translate(e) from e
    assert pool is not None
    return pool


async def connect(
    database: DatabaseSettings, *, dsn: str | None = None, timeout: float = 10.0
) -> asyncpg.Connection:
    kwargs: dict[str, Any] = {}
    ssl_arg = _ssl_arg(database)
    if ssl_arg is not None:
        kwargs["ssl"] = ssl_arg
    try:
        return await asyncpg.connect(dsn or database.url.get(), timeout=timeout, **kwargs)
    except _DRIVER_ERRORS as e:
        raise translate(e) from e


# ---- migrations ------------------------------------------------------------

_MIGRATION_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# One lock id for every `tracker migrate`, so concurrent runs apply each file once.
_MIGRATION_LOCK = 0x7472_6163_6B72  # "trackr"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Traversable = SQL_DIR) -> list[Migration]:
    """Every ``NNN_name.sql`` in ``directory`` (a Path works too), in file-name order."""
    out = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        m = _MIGRATION_RE.match(path.name)
        if not m or not path.is_file():
            continue
        out.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return out


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already: int
    timescaledb: bool


async def migrate(conn: asyncpg.Connection, directory: Traversable = SQL_DIR) -> MigrationReport:
    """Apply pending migrations, each in its own transaction; verify applied ones.

    An applied migration whose file has changed is an error: migrations are
    append-only, a fix is a new numbered file.
    """
    migrations = load_migrations(directory)
    try:
        # Session-level advisory lock: a second `tracker migrate` waits here.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            applied = {r["version"]: r for r in rows}
            timescale = await _enable_timescaledb(conn, fresh=not applied)
            done: list[str] = []
            for m in migrations:
                row = applied.get(m.version)
                if row is not None:
                    if row["checksum"] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version:03d}_{m.name} was changed after it was "
                            "applied; add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                done.append(f"{m.version:03d}_{m.name}")
            return MigrationReport(done, len(migrations) - len(done), timescale)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    except MigrationError:
        raise
    except _DRIVER_ERRORS as e:
        raise translate(e) from e


async def _enable_timescaledb(conn: asyncpg.Connection, *, fresh: bool) -> bool:
    """Create the extension where the server offers it, on a database that has
    no migration applied yet. The SQL branches on it.

    A database migrated without it stays without it: switching there would
    leave ``frame_events`` a plain partitioned table while later projection
    generations became hypertables, and the TimescaleDB migration (compression,
    retention jobs) recorded as applied without having done anything. Move to
    TimescaleDB on a new database (``docs/scaling.md``)."""
    if await is_timescaledb(conn):
        return True
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not available:
        return False
    if not fresh:
        log.warning(
            "timescaledb is available but this database was migrated without it; it stays plain "
            "PostgreSQL (to move to TimescaleDB, migrate a new database and replay into it)"
        )
        return False
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as e:
        log.warning("timescaledb is available but could not be created: %s", e)
        return False
    return True


async def is_timescaledb(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"))
