"""Worker processes, shared by the benchmarks and the integration tests.

A worker is a child process (``tracker consume|project|...`` or ``python -m
...``) configured the production way, by ``TRACKER_*`` variables only, with its
output in a log file (or discarded). Its RSS is sampled from /proc, its CPU
time comes from wait4; it is stopped with SIGTERM (then SIGKILL) or killed.

Every worker started and not yet reaped is tracked: :func:`kill_leftovers`
SIGKILLs them all (the integration tests call it after every test, so that a
failed test leaves no worker running into the next one).

Nothing here imports pytest, the tests or the rest of ``bench``; the installed
package ``tracker`` imports none of this.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tracker.config import Settings

ROOT = Path(__file__).resolve().parent.parent
# Where the workers' code comes from: this checkout, or another one (``--code``),
# e.g. a worktree with a patch applied, measured against the same records.
CODE_ROOT = ROOT
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def set_code_root(path: Path) -> None:
    global CODE_ROOT
    CODE_ROOT = path.resolve()


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def tracker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracker.cli", *args]


def tracker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The production way to configure a worker: this process's environment
    without its own ``TRACKER_*`` variables, and ``settings`` as ``TRACKER_*``
    (the ones below always, any other where it is not the default: security,
    replication, pool size, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    defaults = Settings().to_env()
    env.update({k: v for k, v in settings.to_env().items() if v != defaults[k]})
    env.update(
        TRACKER_KAFKA_BOOTSTRAP=settings.kafka.bootstrap,
        TRACKER_DATABASE_URL=settings.database.url.get(),
        TRACKER_TOPIC_PREFIX=settings.topics.prefix,
        TRACKER_GROUP_PREFIX=settings.groups.prefix,
        TRACKER_TOPIC_PARTITIONS=str(settings.topics.partitions),
        TRACKER_BATCH_MAX_RECORDS=str(settings.batch.max_records),
        TRACKER_BATCH_TIMEOUT_MS=str(settings.batch.timeout_ms),
        TRACKER_BATCH_LINGER_MS=str(settings.batch.linger_ms),
    )
    env.update(extra)
    return env


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """:func:`tracker_env` for a benchmark's workers: no span exporter inherited
    from the caller (``OTEL_EXPORTER_*``), the workers' code first on the path."""
    env = {k: v for k, v in tracker_env(settings).items() if not k.startswith("OTEL_EXPORTER")}
    env["PYTHONPATH"] = os.pathsep.join(
        p
        for p in dict.fromkeys([str(CODE_ROOT), str(ROOT), *env.get("PYTHONPATH", "").split(os.pathsep)])
        if p
    )
    env.update(extra)
    return env


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return None


_running: list[Worker] = []  # started and not reaped yet


def kill_leftovers() -> None:
    """SIGKILL every worker started and not reaped yet (a failed test or
    scenario must not leave workers running)."""
    while _running:
        _running.pop().kill()


@dataclass(eq=False)
class Worker:
    """A child process whose RSS is sampled from /proc (every call of
    :meth:`sample`) and whose CPU time comes from wait4.

    It is reaped by :meth:`reap` alone (wait4, never ``Popen.poll``): every
    other method that needs to know whether it still runs goes through it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None = None  # stdout and stderr; None: discarded
    cwd: Path | None = None  # None: CODE_ROOT
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    rss_kb_max: int = 0
    rss_series: list[tuple[float, int]] = field(default_factory=list)
    cpu_series: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, CPU seconds)
    cpu_s: float | None = None
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> Worker:
        """Start it; again after it ended, as a new process (kill() and stop() then act on that one)."""
        self.ended = self.returncode = self.cpu_s = None
        self._log = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd or CODE_ROOT,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()
        _running.append(self)
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
        cpu = proc_cpu_s(self.pid)
        if cpu is not None:
            self.cpu_series.append((time.monotonic(), cpu))

    def cpu_at(self, t: float) -> float:
        """CPU seconds it had used at monotonic time ``t`` (the last sample at or before it)."""
        before = [c for ts, c in self.cpu_series if ts <= t]
        return before[-1] if before else 0.0

    def rss_mb(self) -> float:
        """Its RSS now (0 once it has exited)."""
        rss = None if self.proc is None or self.reap() else proc_rss_kb(self.pid)
        return (rss or 0) / 1024

    def reap(self, block: bool = False) -> bool:
        """True once the process has exited (and its rusage is recorded)."""
        if self.ended is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
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
        if self._log is not None:
            self._log.close()
        if self in _running:
            _running.remove(self)
        return True

    def alive(self) -> bool:
        return self.proc is not None and not self.reap()

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.reap(block=True)

    def end(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; only this worker's own process. Blocks."""
        if self.proc is None or self.reap():
            return
        self.proc.terminate()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.reap():
                return
            time.sleep(0.05)
        self.kill()

    async def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then :meth:`wait`: its exit status."""
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
        return await self.wait(timeout)

    async def wait(self, timeout: float = 300) -> int:
        """Its exit status; SIGKILL and ``TimeoutError`` if it runs ``timeout`` seconds more."""
        deadline = time.monotonic() + timeout
        while not self.reap():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} did not exit within {timeout}s")
            await asyncio.sleep(0.1)
        assert self.returncode is not None
        return self.returncode

    def output(self) -> str:
        """What it wrote (stdout and stderr), from its log."""
        assert self.log_path is not None, f"{self.name}: output discarded"
        return self.log_path.read_text()

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None:
            return ""
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
