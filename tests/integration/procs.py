"""Workers and simulators as real OS processes, for the fault tests."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.helpers import ROOT, env_for
from tracker.config import Settings

_started: list[Proc] = []


def kill_leftovers() -> None:
    """SIGKILL every process a test started and did not stop (a failed test
    must not leave workers running into the next test, or into CI's end)."""
    while _started:
        _started.pop().kill()


class Proc:
    """One ``tracker ...`` process; ``kill()`` is SIGKILL, ``stop()`` SIGTERM."""

    def __init__(self, settings: Settings, *args: str, log: Path | None = None, **env: str) -> None:
        self.args = args
        self._env = {**env_for(settings), **env}
        self._log = log
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = open(self._log, "ab") if self._log else subprocess.DEVNULL
        self.p = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", *self.args],
            env=self._env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _started.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            self.p.wait()  # type: ignore[union-attr]

    async def stop(self, timeout: float = 60) -> int:
        assert self.p is not None
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 300) -> int:
        assert self.p is not None
        deadline = time.monotonic() + timeout
        while self.p.poll() is None:
            if time.monotonic() > deadline:
                self.p.kill()
                raise AssertionError(f"tracker {' '.join(self.args)} did not exit within {timeout}s")
            await asyncio.sleep(0.1)
        return self.p.returncode

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
        return 0.0
