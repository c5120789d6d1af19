"""The commands of compose/local/stack.py: argparse, one lock per stack folder, exit codes.

Exit codes: 0 done (status: every service running and answering), 1 a clear error (one message on
stderr, "stack.py: error: ..."), 2 a usage error (argparse), 3 status found a service stopped or not
answering, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import shutil
import sys
import time

from .common import STACK, StackError, log, rel
from .kafka import Kafka
from .postgres import Postgres
from .service import Service

DESCRIPTION = "Local, Docker-free service stack for detektor-tracker: Kafka (KRaft) + PostgreSQL."
SERVICES: tuple[type[Service], ...] = (Kafka, Postgres)  # the order of status and env lines


@contextlib.contextmanager
def stack_lock():
    STACK.mkdir(parents=True, exist_ok=True)
    with open(STACK / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another stack.py is working on this stack; waiting for it ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def services(only: str | None) -> list[Service]:
    return [cls() for cls in SERVICES if only in (None, cls.name)]


def cmd_up(only: str | None) -> int:
    t0 = time.monotonic()
    svcs = services(only)
    with stack_lock():
        # Postgres first: its checks are quick, so a port clash there is reported before Kafka's slower start.
        for svc in sorted(svcs, key=lambda s: s.name != "postgres"):
            svc.start()
    for svc in svcs:
        print(svc.describe())
    log(f"up in {time.monotonic() - t0:.1f}s")
    return 0


def cmd_down(only: str | None, kill: bool = False) -> int:
    with stack_lock():
        for svc in services(only):
            svc.stop(kill=kill)
    return 0


def cmd_status() -> int:
    ok = True
    for svc in services(None):
        running, line = svc.status()
        ok &= running
        print(line)
    return 0 if ok else 3


def cmd_reset(wipe_all: bool) -> int:
    with stack_lock():
        for svc in services(None):
            svc.stop()
        for svc in services(None):
            svc.wipe()
        if wipe_all:
            for p in STACK.iterdir():
                if p.name != ".lock":
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
    jars = " incl. cached Kafka jars" if wipe_all else "; cached Kafka jars kept"
    log(f"stack data removed ({rel(STACK)}{jars})")
    return 0


def cmd_env() -> int:
    for svc in services(None):
        print(f"{svc.env_var}={svc.address()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stack.py", description=DESCRIPTION)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, hlp in (("up", "start services (idempotent)"), ("down", "stop services")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--only", choices=[s.name for s in SERVICES], help="just this service")
    sub.add_parser("status", help="show state; exit 0 when all running, 3 otherwise")
    p = sub.add_parser("reset", help="down + delete all data (keeps cached Kafka jars unless --all)")
    p.add_argument("--all", action="store_true", help="also delete the cached Kafka jars")
    for svc in (s.name for s in SERVICES):
        sub.add_parser(f"start-{svc}", help=f"start only {svc}")
        p = sub.add_parser(f"stop-{svc}", help=f"stop only {svc}")
        p.add_argument(
            "--kill", action="store_true", help="SIGKILL instead of a clean stop (crash simulation)"
        )
    sub.add_parser("env", help="print STACK_KAFKA_BOOTSTRAP / STACK_PG_DSN lines")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            return cmd_up(a.only)
        if a.cmd == "down":
            return cmd_down(a.only)
        if a.cmd == "status":
            return cmd_status()
        if a.cmd == "reset":
            return cmd_reset(a.all)
        if a.cmd == "env":
            return cmd_env()
        action, svc = a.cmd.split("-", 1)
        if action == "start":
            return cmd_up(svc)
        return cmd_down(svc, kill=a.kill)
    except StackError as e:
        print(f"stack.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
