"""One harness run's view of the stack: scratch databases and topics, the
progress of consumer groups, worker processes driven until they exit.

Every database and topic a run creates is named after the harness's pid
(``bench_<pid>_<hex>_...``, ``bench-<pid>-<hex>....``) and dropped when its
scenario ends; a later run drops the leftovers of runs whose process is gone
(a killed harness), and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bench.infra import cpu_meter, log, pid_alive, read_pid
from bench.workers import ROOT, Worker
from tracker.adapters.kafka import client_kwargs
from tracker.adapters.postgres import connect, migrate
from tracker.config import Secret, Settings

_DB_RE = re.compile(r"^bench_(\d+)_[0-9a-f]+_")
_TOPIC_RE = re.compile(r"^bench-(\d+)-[0-9a-f]+\.")


async def drop_database(conn: asyncpg.Connection, name: str) -> None:
    """DROP DATABASE, patiently. A plain DROP cancels an autovacuum worker by
    itself (WITH (FORCE) would refuse to: that worker is not ours to signal), and
    waits a little for other sessions to go; only then is FORCE tried. Failures
    are logged, not raised: the run's final sweep (and the next run) retry."""
    for _ in range(10):
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            return
        except asyncpg.ObjectInUseError:
            await asyncio.sleep(1.0)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
            log(f"could not drop database {name}: {e}")
            return
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
        log(f"could not drop database {name}: {e}")


def db_url(base: Settings, name: str) -> str:
    parts = urlsplit(base.database.url.get())
    return urlunsplit(parts._replace(path=f"/{name}"))


# ---- progress of consumer groups -------------------------------------------------


@dataclass
class Progress:
    """Committed-offset progress of one or more groups over the same records."""

    total: int
    series: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, min committed)
    t0: float = 0.0  # monotonic time of the start

    def steady_cpu_us_per_event(self, workers: Sequence[Worker], info: dict[str, Any]) -> float | None:
        """The workers' CPU per event between the first commit and the last (``rate``'s
        interval), so that process start-up and group join are left out as in the rate."""
        if info.get("method") != "first commit to last commit":
            return None
        a, b = self.t0 + info["first_commit_s"], self.t0 + info["done_s"]
        cpu = sum(w.cpu_at(b) - w.cpu_at(a) for w in workers)
        return 1e6 * cpu / max(1, self.total - info["first_commit_records"])

    def rate(self) -> tuple[float | None, dict[str, Any]]:
        """Steady-state rate: records committed between the first commit seen and
        the moment everything was committed, over that interval. Process start-up,
        group join and the first batch are outside it."""
        first = next(((t, n) for t, n in self.series if n > 0), None)
        done = next(((t, n) for t, n in self.series if n >= self.total), None)
        info: dict[str, Any] = {"records": self.total}
        if first is None or done is None:
            info["error"] = "did not finish"
            return None, info
        t0, n0 = first
        t1, _ = done
        info.update(first_commit_s=round(t0, 3), done_s=round(t1, 3), first_commit_records=n0)
        if t1 - t0 < 0.2 or self.total - n0 < self.total * 0.2:
            # Too short to see a steady state (tiny scale): whole run from process start.
            info["method"] = "process start to last commit"
            return self.total / max(t1, 1e-6), info
        info["method"] = "first commit to last commit"
        return (self.total - n0) / (t1 - t0), info


class Stack:
    """One harness run's view of the stack: names, admin client, scratch resources."""

    def __init__(self, base: Settings, workdir: Path) -> None:
        self.base = base
        self.workdir = workdir
        self.pid = os.getpid()
        self.hex = secrets.token_hex(3)
        self.admin: AIOKafkaAdminClient | None = None
        self._n = 0

    async def start(self) -> None:
        deadline = time.monotonic() + 60
        while True:  # the stack may be bouncing (other users' fault tests): wait a little
            self.admin = AIOKafkaAdminClient(**client_kwargs(self.base.kafka), request_timeout_ms=15_000)
            try:
                await self.admin.start()
                break
            except KafkaError as e:
                await self.admin.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Kafka at {self.base.kafka.bootstrap} unreachable: run `make stack-up`"
                    ) from e
                await asyncio.sleep(2.0)
        await self.services_fingerprint()  # and PostgreSQL (bounded wait)
        await self.drop_stale()

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
            self.admin = None

    # names ---------------------------------------------------------------------
    def name(self, what: str) -> str:
        self._n += 1
        return f"{what}{self._n}"

    def topic_prefix(self, what: str) -> str:
        return f"bench-{self.pid}-{self.hex}.{what}"

    def group_prefix(self, what: str) -> str:
        return f"bench-{self.pid}-{self.hex}.{self.name(what)}"

    def db_name(self, what: str) -> str:
        return f"bench_{self.pid}_{self.hex}_{self.name(what)}"

    async def services_fingerprint(self) -> tuple[str, int | None]:
        """Changes when PostgreSQL or the Kafka broker restarts (other users of the
        stack run fault tests that bounce them): a scenario that saw one is rerun."""
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = await asyncpg.connect(self.base.database.url.get(), timeout=5)
                try:
                    pg = str(await conn.fetchval("SELECT pg_postmaster_start_time()"))
                finally:
                    await conn.close()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
        return pg, read_pid(ROOT / ".stack" / "kafka" / "kafka.pid")

    async def wait_stable(self, settle_s: float = 20.0, limit_s: float = 600.0) -> None:
        """After a restart: wait until neither service has restarted for ``settle_s``
        and the broker answers metadata requests again."""
        deadline = time.monotonic() + limit_s
        while True:
            fp = await self.services_fingerprint()
            await asyncio.sleep(settle_s)
            try:
                assert self.admin is not None
                await self.admin.list_topics()
                ok = await self.services_fingerprint() == fp
            except KafkaError:
                ok = False
            if ok or time.monotonic() > deadline:
                return
            log("the stack is still restarting; waiting")

    # cleanup of dead runs --------------------------------------------------------
    async def drop_stale(self) -> None:
        conn = await asyncpg.connect(self.base.database.url.get())
        try:
            names = [
                r[0]
                for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'")
            ]
            for n in names:
                m = _DB_RE.match(n)
                if m and int(m.group(1)) != self.pid and not pid_alive(int(m.group(1))):
                    log(f"dropping database {n} left by a dead benchmark run")
                    await drop_database(conn, n)
        finally:
            await conn.close()
        assert self.admin is not None
        stale = []
        for t in await self.admin.list_topics():
            m = _TOPIC_RE.match(t)
            if m and int(m.group(1)) != self.pid and not pid_alive(int(m.group(1))):
                stale.append(t)
        if stale:
            log(f"deleting {len(stale)} topics left by dead benchmark runs")
            await self.delete_topics(stale)

    async def drop_own(self) -> None:
        """Whatever of this run is still there (a drop that met an outage): databases and topics."""
        await self.services_fingerprint()  # waits (bounded) for PostgreSQL to be back
        conn = await asyncpg.connect(self.base.database.url.get())
        try:
            for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                f"bench\\_{self.pid}\\_{self.hex}\\_%",
            ):
                log(f"dropping leftover database {r[0]}")
                await drop_database(conn, r[0])
        finally:
            await conn.close()
        assert self.admin is not None
        mine = [t for t in await self.admin.list_topics() if t.startswith(f"bench-{self.pid}-{self.hex}.")]
        await self.delete_topics(mine)

    # topics ----------------------------------------------------------------------
    async def create_topics(self, topics: Sequence[str], partitions: int) -> None:
        assert self.admin is not None
        try:
            await self.admin.create_topics(
                [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
            )
        except TopicAlreadyExistsError:
            pass
        for _ in range(100):  # wait for the metadata to show them
            if set(topics) <= set(await self.admin.list_topics()):
                return
            await asyncio.sleep(0.1)

    async def delete_topics(self, topics: Sequence[str]) -> None:
        assert self.admin is not None
        if not topics:
            return
        try:
            await self.admin.delete_topics(list(topics))
        except KafkaError as e:
            log(f"could not delete topics {list(topics)[:3]}...: {e}")

    async def delete_prefix(self, prefix: str) -> None:
        assert self.admin is not None
        await self.delete_topics([t for t in await self.admin.list_topics() if t.startswith(prefix + ".")])

    async def end_offsets_total(self, topics: Sequence[str]) -> int:
        from tracker.adapters.kafka import topic_partitions

        tps = await topic_partitions(self.base.kafka, topics)
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(**client_kwargs(self.base.kafka), group_id=None)
        await c.start()
        try:
            ends = await c.end_offsets(tps)
            begins = await c.beginning_offsets(tps)
        finally:
            await c.stop()
        return sum(ends[tp] - begins[tp] for tp in tps)

    async def committed(self, group: str) -> int:
        assert self.admin is not None
        try:
            offs = await self.admin.list_consumer_group_offsets(group)
        except KafkaError:
            return 0
        return sum(max(0, o.offset) for o in offs.values())

    async def group_state(self, group: str) -> str:
        assert self.admin is not None
        try:
            resp = await self.admin.describe_consumer_groups([group])
        except KafkaError:
            return "unknown"
        for r in resp:
            for g in getattr(r, "groups", []):
                # (error_code, group_id, state, protocol_type, protocol, members[, ...])
                return str(g[2])
        return "unknown"

    # databases -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def scratch(
        self, what: str, *, topic_prefix: str | None = None, own_topics: bool = False
    ) -> AsyncIterator[Settings]:
        """A fresh migrated database (dropped afterwards) and settings that point at it.

        ``topic_prefix`` defaults to one of its own; ``own_topics`` deletes the
        prefix's topics afterwards (the shared source topics are deleted at the end
        of the run instead)."""
        dbname = self.db_name(what)
        admin = await asyncpg.connect(self.base.database.url.get())
        try:
            await admin.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            await admin.close()
        prefix = topic_prefix or self.topic_prefix(self.name(what))
        settings = Settings.from_env(
            environ={},
            kafka_bootstrap=self.base.kafka.bootstrap,
            database_url=Secret(db_url(self.base, dbname)),
            topic_prefix=prefix,
            group_prefix=self.group_prefix(what),
            topic_partitions=self.base.topics.partitions,
            batch_max_records=self.base.batch.max_records,
            batch_timeout_ms=self.base.batch.timeout_ms,
            batch_linger_ms=self.base.batch.linger_ms,
        )
        try:
            conn = await connect(settings.database)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield settings
        finally:
            # Clean-up trouble must not spoil a measurement already made: what is
            # left here, the run's final sweep (drop_own) removes.
            try:
                admin = await asyncpg.connect(self.base.database.url.get())
                try:
                    await drop_database(admin, dbname)
                finally:
                    await admin.close()
                if own_topics or topic_prefix is None:
                    await self.delete_prefix(prefix)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as e:
                log(f"clean-up of {dbname} deferred: {type(e).__name__}: {e}")

    def with_group(self, settings: Settings, what: str) -> Settings:
        """Same database and topics, a fresh group prefix (one per repetition)."""
        return settings.with_overrides(group_prefix=self.group_prefix(what))

    # running workers -------------------------------------------------------------
    def worker(self, name: str, argv: list[str], env: dict[str, str]) -> Worker:
        return Worker(name, argv, env, self.workdir / f"{self.name(name)}.log")

    async def drive(
        self,
        workers: Sequence[Worker],
        *,
        groups: Sequence[str],
        total: int,
        timeout_s: float,
        interval_s: float = 0.1,
        stop_when_done: bool = False,
    ) -> Progress:
        """Start the workers, sample RSS and group progress until they all exit."""
        progress = Progress(total)
        cpu = cpu_meter()
        for w in workers:
            w.start()
        t0 = progress.t0 = time.monotonic()
        try:
            while True:
                now = time.monotonic() - t0
                for w in workers:
                    w.sample()
                cpu.sample()
                if groups:
                    counts = [await self.committed(g) for g in groups]
                    progress.series.append((time.monotonic() - t0, min(counts)))
                if stop_when_done and progress.series and progress.series[-1][1] >= total:
                    for w in workers:
                        w.end()
                if all(w.reap() for w in workers):
                    break
                if now > timeout_s:
                    raise TimeoutError(f"workers still running after {timeout_s:.0f}s")
                await asyncio.sleep(interval_s)
            if groups:  # final commits
                counts = [await self.committed(g) for g in groups]
                progress.series.append((time.monotonic() - t0, min(counts)))
        finally:
            for w in workers:
                w.end()
            self.last_cpu = cpu.stop()
        bad = [w for w in workers if w.returncode not in (0, None)]
        if bad:
            w = bad[0]
            raise RuntimeError(f"{w.name} exited {w.returncode}:\n{w.log_tail()}")
        return progress
