"""Processes of this stack: argv from /proc, pid files, stopping with a deadline, reaping."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from .common import log


def proc_cmdline(pid: int) -> list[str] | None:
    """Argv of a live (non-zombie) process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        if state in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (OSError, ValueError):
        return None
    if not raw:
        return None
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]


def proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def proc_ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def find_pids(*needles: str) -> list[int]:
    """Live processes whose argv contains every needle (each as a whole argument or substring)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        argv = proc_cmdline(int(entry))
        if argv and all(any(n in a for a in argv) for n in needles):
            found.append(int(entry))
    return sorted(found)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def terminate(pids: list[int], name: str, timeout: float, first_signal: int = signal.SIGTERM) -> None:
    alive = [p for p in pids if proc_cmdline(p) is not None]
    if not alive:
        return
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, first_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap()
        if all(proc_cmdline(p) is None for p in alive):
            wait_gone(alive)
            return
        time.sleep(0.2)
    still = [p for p in alive if proc_cmdline(p) is not None]
    log(f"{name} (pid {' '.join(map(str, still))}) still alive after {timeout:.0f}s: SIGKILL")
    for p in still:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(proc_cmdline(p) is not None for p in alive):
        reap()
        time.sleep(0.1)
    wait_gone(alive)


def wait_gone(pids: list[int], timeout: float = 3.0) -> None:
    """Best effort: wait until dead processes have been reaped (left /proc), so that a `pgrep` right after
    `down` shows nothing. Some init processes (PID 1 in sandboxes/containers) reap zombies only lazily."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        reap()
        time.sleep(0.1)


def reap() -> None:
    """Reap our own exited children (only relevant when start and stop happen in one invocation)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
