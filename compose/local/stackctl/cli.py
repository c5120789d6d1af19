"""The commands of compose/local/stack.py: argparse, one lock per stack folder, exit codes.

The mode (STACK_BROKERS, STACK_SECURE: common.py) chooses the stack every command works on.

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

from .common import BROKERS, MODE, MODE_OFFSETS, SECURE, SETTINGS_ERROR, STACK, StackError, log, rel
from .kafka import Kafka
from .postgres import Postgres
from .security import ROLES, Security
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
    log(f"{MODE + ' stack ' if MODE else ''}up in {time.monotonic() - t0:.1f}s")
    return 0


def cmd_down(only: str | None, kill: bool = False) -> int:
    with stack_lock():
        for svc in services(only):
            svc.stop(kill=kill)
    return 0


def cmd_node(action: str, node: int, kill: bool) -> int:
    """One Kafka node of a cluster started or stopped alone (fault injection)."""
    with stack_lock():
        if action == "start":
            Kafka().start(node)
        else:
            Kafka().stop(kill=kill, node_id=node)
    return 0


def cmd_grant(topic_prefix: str, group_prefix: str) -> int:
    with stack_lock():
        Kafka().grant(topic_prefix, group_prefix)
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
        if SECURE:
            Security().wipe()
        if wipe_all:
            for p in STACK.iterdir():
                if p.name != ".lock" and p.name not in MODE_OFFSETS:  # another mode's stack
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
    jars = " incl. cached Kafka jars" if wipe_all else "; cached Kafka jars kept"
    log(f"stack data removed ({rel(STACK)}{jars})")
    return 0


def cmd_env(role: str | None) -> int:
    if role is None:
        for svc in services(None):
            print(f"{svc.env_var}={svc.address()}")
        return 0
    # The TRACKER_* settings of one of the tracker's roles on this stack.
    kafka, pg = Kafka(), Postgres()
    lines = {"TRACKER_KAFKA_BOOTSTRAP": kafka.address(), "TRACKER_DATABASE_URL": pg.address()}
    if BROKERS > 1:
        lines["TRACKER_TOPIC_REPLICATION_FACTOR"] = "3"
        lines["TRACKER_TOPIC_MIN_INSYNC_REPLICAS"] = "2"
    if kafka.security is not None:
        sec = kafka.security
        lines |= {
            "TRACKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TRACKER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "TRACKER_KAFKA_SASL_USERNAME": ROLES[role],
            "TRACKER_KAFKA_SASL_PASSWORD": sec.password("kafka", ROLES[role]),
            "TRACKER_KAFKA_SSL_CAFILE": str(sec.ca),
            "TRACKER_DATABASE_SSLMODE": "verify-full",
            "TRACKER_DATABASE_SSLROOTCERT": str(sec.ca),
        }
    for name, value in lines.items():
        print(f"{name}={value}")
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
        start = sub.add_parser(f"start-{svc}", help=f"start only {svc}")
        p = sub.add_parser(f"stop-{svc}", help=f"stop only {svc}")
        p.add_argument(
            "--kill", action="store_true", help="SIGKILL instead of a clean stop (crash simulation)"
        )
        if svc == "kafka":
            for q in (start, p):
                q.add_argument("--node", type=int, help="just this node of a cluster (1-3)")
    p = sub.add_parser("env", help="print STACK_KAFKA_BOOTSTRAP / STACK_PG_DSN lines")
    p.add_argument(
        "--tracker", choices=sorted(ROLES), metavar="ROLE", help="the TRACKER_* settings of a role"
    )
    p = sub.add_parser("grant", help="secure stack: the tracker's ACLs for a topic and group prefix")
    p.add_argument("--topic-prefix", default="detektor.frames")
    p.add_argument("--group-prefix", default="tracker")
    a = ap.parse_args(argv)
    if SETTINGS_ERROR:
        print(f"stack.py: error: {SETTINGS_ERROR}", file=sys.stderr)
        return 1
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
            return cmd_env(a.tracker)
        if a.cmd == "grant":
            return cmd_grant(a.topic_prefix, a.group_prefix)
        action, svc = a.cmd.split("-", 1)
        if getattr(a, "node", None) is not None:
            return cmd_node(action, a.node, getattr(a, "kill", False))
        if action == "start":
            return cmd_up(svc)
        return cmd_down(svc, kill=a.kill)
    except StackError as e:
        print(f"stack.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
