"""Workers and simulators as real OS processes, for the fault tests: the
benchmark's worker harness (``bench.workers``), started from settings."""

from __future__ import annotations

from pathlib import Path

from bench.workers import Worker, kill_leftovers, tracker_argv, tracker_env
from tracker.config import Settings

__all__ = ["Proc", "kill_leftovers"]


class Proc(Worker):
    """One ``tracker ...`` process; ``kill()`` is SIGKILL, ``await stop()`` SIGTERM."""

    def __init__(self, settings: Settings, *args: str, log: Path | None = None, **env: str) -> None:
        super().__init__(f"tracker {' '.join(args)}", tracker_argv(*args), tracker_env(settings, **env), log)
        self.args = args
