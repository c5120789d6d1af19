"""Measurement plumbing shared by the scenarios: the log, statistics of the
repetitions, the CPU used by the machine and by the local stack's Kafka and
PostgreSQL (from /proc), the workers' commit, a probe's JSON result. Scratch databases and topics
are ``bench.stack``'s, worker processes ``bench.workers``'.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import workers
from bench.workers import ROOT, proc_cpu_s

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def read_pid(path: Path) -> int | None:
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
    kafka_pid = read_pid(stack / "kafka" / "kafka.pid")
    pg_pid = read_pid(stack / "pg" / "data" / "postmaster.pid")
    if kafka_pid and pid_alive(kafka_pid):
        kafka = [kafka_pid]
    else:
        kafka = _comm_pids(lambda a: a[0].endswith(b"java") and b"kafka.Kafka" in a)
    if pg_pid and pid_alive(pg_pid):
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


def git_commit() -> str:
    """The commit of the workers' code, ``-dirty`` if tracked files differ from it."""
    commit = "unknown"
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(workers.CODE_ROOT)]
        head = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        commit = head + ("-dirty" if dirty else "")
    # A run from an exported tree (git archive, no .git) says which commit it is.
    return os.environ.get("BENCH_GIT_COMMIT") or commit


def read_json_line(text: str) -> dict[str, Any]:
    """The last line of a probe's stdout that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON result in output: {text[-500:]!r}")
