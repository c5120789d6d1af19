"""Integration fixtures: the real Kafka and PostgreSQL of ``compose/local``.

Each test gets its own database (created from the stack's, migrated) and its
own topic and group prefixes, so tests neither see nor disturb each other's
data, nor the demo's. The stack must be up (``make test`` starts it); if it is
not, the tests fail loudly rather than skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from tests.integration.helpers import empty_database
from tests.integration.prom import PrometheusTools, PrometheusUnavailable, find_prometheus
from tests.integration.shipped_promql import dashboard_files, load_dashboard
from tracker.adapters.postgres import connect, migrate
from tracker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = Settings.from_env()

pytestmark = pytest.mark.integration


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _stack_is_up() -> None:
    db = urlsplit(BASE.database.url.get())
    missing = []
    if not _reachable(BASE.kafka.bootstrap.split(",")[0]):
        missing.append(f"Kafka at {BASE.kafka.bootstrap}")
    if not _reachable(f"{db.hostname}:{db.port or 5432}"):
        missing.append(f"PostgreSQL at {db.hostname}:{db.port}")
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not reachable: run `make stack-up` (make test does it for you)",
            pytrace=False,
        )


def stack(*args: str) -> None:
    """Drive compose/local/stack.py (fault-injection tests bounce services)."""
    subprocess.run(
        [sys.executable, str(ROOT / "compose/local/stack.py"), *args], check=True, stdout=subprocess.DEVNULL
    )


async def _delete_topics(s: Settings) -> None:
    """Delete the test's topics (best effort): a broker that keeps every test's
    partitions for the whole suite stops and starts ever more slowly, which the
    broker-restart fault test pays for."""
    from tracker.adapters.kafka import make_admin

    admin = make_admin(s.kafka, role="test-cleanup")
    try:
        await asyncio.wait_for(admin.start(), 10)
        mine = [t for t in await admin.list_topics() if t.startswith(f"{s.topics.prefix}.")]
        if mine:
            await asyncio.wait_for(admin.delete_topics(mine), 20)
    except Exception:  # the broker may be down after a fault test: nothing to clean then
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@contextlib.asynccontextmanager
async def fresh_settings(**overrides: object) -> AsyncIterator[Settings]:
    """A database created from the stack's and migrated, and topic and group
    prefixes of its own; the database is dropped and the topics deleted on exit."""
    tag = uuid.uuid4().hex[:10]
    async with empty_database() as url:
        s = Settings.from_env(
            database_url=url,
            topic_prefix=f"t{tag}.frames",
            group_prefix=f"t{tag}",
            batch_timeout_ms=50,
            **overrides,
        )
        conn = await connect(s.database)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        try:
            yield s
        finally:
            await _delete_topics(s)


@pytest_asyncio.fixture
async def settings() -> AsyncIterator[Settings]:
    """Fresh database + topic namespace for one test."""
    async with fresh_settings() as s:
        yield s


@pytest_asyncio.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database.url.get())
    yield conn
    await conn.close()


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict[str, Any]]:
    """The Grafana dashboards (compose/grafana/dashboards/) by file name, loaded
    once; tests only read them (the ``*_can_fail`` ones break deep copies)."""
    return {p.name: load_dashboard(p) for p in dashboard_files()}


@pytest.fixture(scope="session")
def prom_tools() -> PrometheusTools:
    """prometheus and promtool, installed from Debian's package if missing (as root)."""
    try:
        return find_prometheus()
    except PrometheusUnavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(autouse=True)
def _no_leftover_processes():  # type: ignore[no-untyped-def]
    from tests.integration.procs import kill_leftovers

    yield
    kill_leftovers()
