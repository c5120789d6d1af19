"""Plumbing shared by the scenarios: scratch databases and topics, worker
processes (RSS and CPU from /proc and wait4), consumer-group progress.

Every database and topic a run creates is named after the harness's pid
(``bench_<pid>_<hex>_...``, ``bench-<pid>-<hex>....``) and dropped when its
scenario ends; a later run drops the leftovers of runs whose process is gone
(a killed harness), and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tracker.config import Secret, Settings
from tracker.db import connect, migrate
from tracker.kafka import client_kwargs

ROOT = Path(__file__).resolve().parent.parent
# Where the workers' code comes from: this checkout, or another one (``--code``),
# e.g. a worktree with a patch applied, measured against the same records.
CODE_ROOT = ROOT


def set_code_root(path: Path) -> None:
    global CODE_ROOT
    CODE_ROOT = path.resolve()


_DB_RE = re.compile(r"^bench_(\d+)_[0-9a-f]+_")
_TOPIC_RE = re.compile(r"^bench-(\d+)-[0-9a-f]+\.")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    parts = urlsplit(base.database_url.get())
    return urlunsplit(parts._replace(path=f"/{name}"))


# ---- statistics ----------------------------------------------------------------


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Median of the repetitions, with the spread (min, max, relative half-range)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread_pct": None, "reps": list(values)}
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    spread = round(100.0 * (hi - lo) / 2.0 / med, 1) if med else 0.0
    return {"median": med, "min": lo, "max": hi, "spread_pct": spread, "reps": [round(v, 3) for v in vals]}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sample."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q * len(s) + 0.5) - 1))
    return s[k]


# ---- /proc ----------------------------------------------------------------------


def proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return None


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def _comm_pids(match: Any) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and match(argv):
            out.append(int(entry))
    return out


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def service_pids() -> dict[str, list[int]]:
    """The local stack's Kafka broker and PostgreSQL processes (postmaster and
    every backend: other users of the stack included). Other clusters on the
    machine are left out when the stack's pid files say which is ours."""
    stack = ROOT / ".stack"
    kafka_pid = _read_pid(stack / "kafka" / "kafka.pid")
    pg_pid = _read_pid(stack / "pg" / "data" / "postmaster.pid")
    if kafka_pid and _pid_alive(kafka_pid):
        kafka = [kafka_pid]
    else:
        kafka = _comm_pids(lambda a: a[0].endswith(b"java") and b"kafka.Kafka" in a)
    if pg_pid and _pid_alive(pg_pid):
        pg = [pg_pid, *_comm_pids(lambda a: a[0].startswith(b"postgres"))]
        pg = [p for p in pg if p == pg_pid or _ppid(p) == pg_pid]
    else:
        pg = _comm_pids(lambda a: a[0].startswith(b"postgres") or b"/postgres" in a[0])
    return {"kafka": kafka, "postgres": pg}


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class CpuMeter:
    """CPU seconds used by Kafka, PostgreSQL (every backend: other users of the
    stack included) and the whole machine over an interval: says what was busy.

    Call :meth:`sample` now and then: a backend that exits between two samples
    is counted up to its last sample."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.m0 = machine_cpu()
        self.first = self._snapshot()
        self.last = {k: dict(v) for k, v in self.first.items()}
        self._next = 0.0

    @staticmethod
    def _snapshot() -> dict[str, dict[int, float]]:
        return {k: {p: proc_cpu_s(p) or 0.0 for p in pids} for k, pids in service_pids().items()}

    def sample(self, every_s: float = 0.5) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + every_s
        for k, cur in self._snapshot().items():
            self.last.setdefault(k, {}).update(cur)

    def stop(self) -> dict[str, float]:
        self._next = 0.0
        self.sample()
        wall = max(1e-6, time.monotonic() - self.t0)
        busy1, total1 = machine_cpu()
        out: dict[str, float] = {
            "wall_s": round(wall, 3),
            "machine_busy_pct": round(100.0 * (busy1 - self.m0[0]) / max(1e-6, total1 - self.m0[1]), 1),
            "machine_cores": float(os.cpu_count() or 1),
        }
        for k, last in self.last.items():
            used = sum(cpu - self.first.get(k, {}).get(p, 0.0) for p, cpu in last.items())
            out[f"{k}_cpu_s"] = round(max(0.0, used), 2)
            out[f"{k}_cores"] = round(max(0.0, used) / wall, 2)
        return out


def cpu_meter() -> CpuMeter:
    return CpuMeter()


# ---- worker processes -----------------------------------------------------------


@dataclass
class Worker:
    """A child process whose RSS is sampled from /proc (every call of sample(),
    0.1 s in Stack.drive) and whose CPU time comes from wait4."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    rss_kb_max: int = 0
    rss_series: list[tuple[float, int]] = field(default_factory=list)
    cpu_s: float | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=CODE_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sample(self) -> None:
        if self.ended is not None:
            return
        rss = proc_rss_kb(self.pid)
        if rss is not None:
            self.rss_kb_max = max(self.rss_kb_max, rss)
            self.rss_series.append((time.monotonic() - self.started, rss))

    def reap(self) -> bool:
        """True once the process has exited (and its rusage is recorded)."""
        if self.ended is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, ru = self.pid, 0, None
        if pid == 0:
            return False
        self.ended = time.monotonic()
        self.returncode = os.waitstatus_to_exitcode(status)
        assert self.proc is not None
        self.proc.returncode = self.returncode  # keep Popen from waiting again
        if ru is not None:
            # ru_maxrss is not used: Linux carries the parent's peak RSS at fork
            # across exec into it, so a child of a large harness would look large.
            self.cpu_s = ru.ru_utime + ru.ru_stime
        self._log.close()
        return True

    def stop(self, sig_timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; only this worker's own process."""
        if self.proc is None or self.reap():
            return
        self.proc.terminate()
        deadline = time.monotonic() + sig_timeout
        while time.monotonic() < deadline:
            if self.reap():
                return
            time.sleep(0.05)
        self.proc.kill()
        while not self.reap():
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def summary(self) -> dict[str, Any]:
        wall = (self.ended or time.monotonic()) - self.started
        return {
            "wall_s": round(wall, 3),
            "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 2),
            "cpu_cores": None if self.cpu_s is None else round(self.cpu_s / max(wall, 1e-6), 2),
            "rss_mb_max": round(self.rss_kb_max / 1024.0, 1),
            "returncode": self.returncode,
        }


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def tracker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracker.cli", *args]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The production way to configure a worker: TRACKER_* variables only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKER_", "OTEL_EXPORTER"))}
    env.update(
        TRACKER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TRACKER_DATABASE_URL=settings.database_url.get(),
        TRACKER_TOPIC_PREFIX=settings.topic_prefix,
        TRACKER_GROUP_PREFIX=settings.group_prefix,
        TRACKER_TOPIC_PARTITIONS=str(settings.topic_partitions),
        TRACKER_BATCH_MAX_RECORDS=str(settings.batch_max_records),
        TRACKER_BATCH_TIMEOUT_MS=str(settings.batch_timeout_ms),
        TRACKER_BATCH_LINGER_MS=str(settings.batch_linger_ms),
        PYTHONPATH=os.pathsep.join(
            p
            for p in dict.fromkeys([str(CODE_ROOT), str(ROOT), *env.get("PYTHONPATH", "").split(os.pathsep)])
            if p
        ),
    )
    env.update(extra)
    return env


# ---- progress of consumer groups -------------------------------------------------


@dataclass
class Progress:
    """Committed-offset progress of one or more groups over the same records."""

    total: int
    series: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, min committed)

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
            self.admin = AIOKafkaAdminClient(**client_kwargs(self.base), request_timeout_ms=15_000)
            try:
                await self.admin.start()
                break
            except KafkaError as e:
                await self.admin.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Kafka at {self.base.kafka_bootstrap} unreachable: run `make stack-up`"
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
                conn = await asyncpg.connect(self.base.database_url.get(), timeout=5)
                try:
                    pg = str(await conn.fetchval("SELECT pg_postmaster_start_time()"))
                finally:
                    await conn.close()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
        return pg, _read_pid(ROOT / ".stack" / "kafka" / "kafka.pid")

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
        conn = await asyncpg.connect(self.base.database_url.get())
        try:
            names = [
                r[0]
                for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'")
            ]
            for n in names:
                m = _DB_RE.match(n)
                if m and int(m.group(1)) != self.pid and not _pid_alive(int(m.group(1))):
                    log(f"dropping database {n} left by a dead benchmark run")
                    await drop_database(conn, n)
        finally:
            await conn.close()
        assert self.admin is not None
        stale = []
        for t in await self.admin.list_topics():
            m = _TOPIC_RE.match(t)
            if m and int(m.group(1)) != self.pid and not _pid_alive(int(m.group(1))):
                stale.append(t)
        if stale:
            log(f"deleting {len(stale)} topics left by dead benchmark runs")
            await self.delete_topics(stale)

    async def drop_own(self) -> None:
        """Whatever of this run is still there (a drop that met an outage): databases and topics."""
        await self.services_fingerprint()  # waits (bounded) for PostgreSQL to be back
        conn = await asyncpg.connect(self.base.database_url.get())
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
        from tracker.kafka import topic_partitions

        tps = await topic_partitions(self.base, topics)
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(**client_kwargs(self.base), group_id=None)
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
        admin = await asyncpg.connect(self.base.database_url.get())
        try:
            await admin.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            await admin.close()
        prefix = topic_prefix or self.topic_prefix(self.name(what))
        settings = Settings.from_env(
            environ={},
            kafka_bootstrap=self.base.kafka_bootstrap,
            database_url=Secret(db_url(self.base, dbname)),
            topic_prefix=prefix,
            group_prefix=self.group_prefix(what),
            topic_partitions=self.base.topic_partitions,
            batch_max_records=self.base.batch_max_records,
            batch_timeout_ms=self.base.batch_timeout_ms,
            batch_linger_ms=self.base.batch_linger_ms,
        )
        try:
            conn = await connect(settings)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield settings
        finally:
            # Clean-up trouble must not spoil a measurement already made: what is
            # left here, the run's final sweep (drop_own) removes.
            try:
                admin = await asyncpg.connect(self.base.database_url.get())
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
        from dataclasses import replace

        return replace(settings, group_prefix=self.group_prefix(what))

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
        t0 = time.monotonic()
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
                        w.stop()
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
                w.stop()
            self.last_cpu = cpu.stop()
        bad = [w for w in workers if w.returncode not in (0, None)]
        if bad:
            w = bad[0]
            raise RuntimeError(f"{w.name} exited {w.returncode}:\n{w.log_tail()}")
        return progress


def read_json_line(text: str) -> dict[str, Any]:
    """The last line of a probe's stdout that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON result in output: {text[-500:]!r}")
