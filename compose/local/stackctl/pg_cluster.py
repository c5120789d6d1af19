"""Where this stack's PostgreSQL cluster lives, which server binaries run it, and as whom.

The cluster is <stack>/pg/ (data/, log/postgres.log, run/ for the Unix socket). As root its programs run
as the `postgres` OS user (PostgreSQL refuses root); when a parent folder of the stack is not traversable
by that user, the cluster moves to /var/tmp/detektor-tracker-stack-<hash>/pg, <stack>/pg becomes a
symlink to it and <stack>/pg-location records it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from .common import IS_ROOT, STACK, apt_install, die, log, rel


def _version_key(p: Path) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", p.parent.name))


def find_pg_bindir() -> Path | None:
    cands = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda b: _version_key(b / "x"),
        reverse=True,
    )
    if cands:
        return cands[0]
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            b = Path(
                subprocess.run(
                    ["pg_config", "--bindir"], capture_output=True, text=True, check=True
                ).stdout.strip()
            )
            if (b / "initdb").is_file() and (b / "pg_ctl").is_file():
                return b
    if (w := shutil.which("initdb")) and shutil.which("pg_ctl"):
        return Path(w).resolve().parent
    return None


class PgCluster:
    """The on-disk cluster (paths re-read from pg-location) and how to run its programs."""

    def __init__(self) -> None:
        self.pointer = STACK / "pg-location"
        self._bindir: Path | None = None
        self._set_paths()

    def _set_paths(self) -> None:
        self.home = self._home()
        self.data = self.home / "data"
        self.logfile = self.home / "log" / "postgres.log"
        self.sockdir = self.home / "run"

    def _home(self) -> Path:
        if self.pointer.is_file():
            p = Path(self.pointer.read_text().strip())
            if p.is_absolute():
                return p
        return STACK / "pg"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
            if self._bindir is None:
                apt_install(
                    "postgresql",
                    why="PostgreSQL 15+ server binaries (initdb, pg_ctl) were not found",
                )
                self._bindir = find_pg_bindir()
                if self._bindir is None:
                    die(
                        "PostgreSQL was installed but initdb/pg_ctl are still not found; "
                        "install the package 'postgresql' (15+)"
                    )
        return self._bindir

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    # -- running as the postgres OS user when we are root -------------------------------------
    def as_owner(self, cmd: list[str]) -> list[str]:
        if IS_ROOT:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return cmd

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        # Output goes to a temp file, not a pipe: a daemon that inherits a pipe would make us hang.
        out = self.home / ".cmd.out"
        with open(out, "w+b") as f:
            with contextlib.suppress(OSError):
                if IS_ROOT:
                    os.chown(out, *self.owner_ids())
            r = subprocess.run(
                self.as_owner(cmd),
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                **kw,
            )
            f.seek(0)
            r.stdout = f.read().decode("utf-8", "replace")
        return r

    def owner_ids(self) -> tuple[int, int]:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            die(
                "running as root, but there is no 'postgres' OS user to run PostgreSQL as "
                "(install the package 'postgresql', which creates it)"
            )
        return pw.pw_uid, pw.pw_gid

    def _owner_can_use(self, path: Path) -> bool:
        if not IS_ROOT:
            return os.access(path, os.W_OK | os.X_OK)
        r = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-w", str(path), "-a", "-x", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return r.returncode == 0

    def prepare(self) -> None:
        _ = self.bindir  # install first: the package creates the postgres user
        for d in (self.home, self.home / "log", self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
        if IS_ROOT:
            uid, gid = self.owner_ids()
            for d in (self.home, self.home / "log", self.sockdir):
                os.chown(d, uid, gid)
        if self._owner_can_use(self.home):
            return
        if self.home != STACK / "pg":
            die(f"the PostgreSQL folder {self.home} is not usable by the 'postgres' user")
        fallback = (
            Path("/var/tmp")
            / f"detektor-tracker-stack-{hashlib.sha1(str(STACK).encode()).hexdigest()[:10]}"
            / "pg"
        )
        log(
            f"NOTE: a parent folder of {rel(STACK)} is not traversable by the 'postgres' OS user "
            f"(PostgreSQL refuses to run as root); keeping the PostgreSQL cluster in {fallback} instead "
            f"(recorded in {rel(self.pointer)}; 'stack.py reset' removes it)"
        )
        shutil.rmtree(STACK / "pg", ignore_errors=True)
        fallback.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(fallback.parent, 0o755)
        self.pointer.write_text(f"{fallback}\n")
        (STACK / "pg").symlink_to(fallback, target_is_directory=True)  # logs stay findable at .stack/pg/log
        self._set_paths()
        self.prepare()

    def wipe(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        if self.home != STACK / "pg":
            with contextlib.suppress(OSError):
                self.home.parent.rmdir()
        self.pointer.unlink(missing_ok=True)
        if (STACK / "pg").is_symlink():
            (STACK / "pg").unlink()
        shutil.rmtree(STACK / "pg", ignore_errors=True)
