"""The cluster tests' own stack: three KRaft brokers with SASL/SCRAM over TLS and ACLs, and PostgreSQL
over TLS with SCRAM passwords (``compose/local``, ``STACK_BROKERS=3 STACK_SECURE=1``), with one
namespace per test.

The stack lives in ``<repo>/.stack/tests/`` on ports of its own (Kafka 27092-27097, PostgreSQL
26432; ``TEST_CLUSTER_KAFKA_PORT`` and ``TEST_CLUSTER_PG_PORT`` move them), so it never meets the
default stack nor a developer's own cluster. It is reset when a session starts (its logs stay for
reading after a failure) and stopped when it ends.

A :class:`Namespace` is one test's database, topics and groups, with the ACLs its principals need
(``stack.py grant``) and its topics made by the admin principal: each role's :class:`Settings` are
what ``stack.py env --tracker ROLE`` says, on the namespace's prefixes and database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tracker.adapters.kafka import ensure_topics
from tracker.adapters.postgres import connect, migrate
from tracker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
STACK_PY = ROOT / "compose/local/stack.py"
ROLES = ("admin", "publisher", "event-store", "projections")
NODES = (1, 2, 3)


def failure(args: tuple[str, ...], p: subprocess.CompletedProcess[str]) -> str:
    """What a failed ``stack.py`` said: all of its stderr, or its first and last 6,000 characters."""
    err = p.stderr if len(p.stderr) <= 12000 else p.stderr[:6000] + "\n[...]\n" + p.stderr[-6000:]
    return f"stack.py {' '.join(args)} exited {p.returncode}:\n{err}"


@dataclass
class ClusterStack:
    """``stack.py`` driven with this stack's ``STACK_*`` variables."""

    kafka_port: int
    pg_port: int
    state: Path
    _roles: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def for_tests(cls) -> ClusterStack:
        return cls(
            kafka_port=int(os.environ.get("TEST_CLUSTER_KAFKA_PORT", "27092")),
            pg_port=int(os.environ.get("TEST_CLUSTER_PG_PORT", "26432")),
            state=ROOT / ".stack" / "tests",
        )

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STACK_", "TRACKER_"))}
        return env | {
            "STACK_DIR": str(self.state),
            "STACK_BROKERS": "3",
            "STACK_SECURE": "1",
            "STACK_KAFKA_PORT": str(self.kafka_port),
            "STACK_KAFKA_CONTROLLER_PORT": str(self.kafka_port + 1),
            "STACK_PG_PORT": str(self.pg_port),
            "STACK_KAFKA_TIMEOUT": "180",  # as long as a node itself waits to be caught up (kafka_config)
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, str(STACK_PY), *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and p.returncode != 0:
            raise AssertionError(failure(args, p))
        return p

    def up(self) -> None:
        self.run("reset")  # a fresh cluster each session; the last one's logs stayed until now
        self.run("up")

    def down(self) -> None:
        self.run("down", check=False)

    def node_port(self, node: int) -> int:
        return self.kafka_port + 2 * (node - 1)

    def kill_node(self, node: int) -> None:
        self.run("stop-kafka", "--node", str(node), "--kill")

    def stop_node(self, node: int) -> None:
        """A controlled shutdown (SIGTERM): leaderships move away first."""
        self.run("stop-kafka", "--node", str(node))

    def start_node(self, node: int) -> None:
        """Start one node and wait until it answers listing itself."""
        self.start("start-kafka", "--node", str(node))

    def start_all(self) -> None:
        """Start every stopped node together (two down need each other for a quorum) and wait for all."""
        self.start("up", "--only", "kafka")

    def start(self, *args: str) -> None:
        """``stack.py`` starting Kafka, once more if a JVM gave up during its own startup.

        These tests are about the tracker's side of broker faults, not about Kafka's startup on a loaded
        two-core machine: a node that exits while starting (seen once in CI, cause unknown then) is
        started again, and the first failure is reported as a warning with the node's last errors, so
        that a run shows it and the next one can tell what it was.
        """
        first = self.run(*args, check=False)
        if first.returncode == 0:
            return
        if "exited during startup" not in first.stderr:
            raise AssertionError(failure(args, first))
        warnings.warn(f"{failure(args, first)}\n(starting it again)", stacklevel=2)
        self.run(*args)

    def role_env(self, role: str) -> dict[str, str]:
        """``stack.py env --tracker ROLE``: the role's TRACKER_* settings."""
        if role not in self._roles:
            out = self.run("env", "--tracker", role).stdout
            self._roles[role] = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return self._roles[role]

    def grant(self, topic_prefix: str, group_prefix: str) -> None:
        self.run("grant", "--topic-prefix", topic_prefix, "--group-prefix", group_prefix)


@dataclass
class Namespace:
    """One test's database, topics and groups on the cluster; settings per role."""

    stack: ClusterStack
    tag: str

    @property
    def database(self) -> str:
        return f"tracker_test_{self.tag}"

    def settings(self, role: str, **overrides: object) -> Settings:
        env = self.stack.role_env(role)
        url = urlsplit(env["TRACKER_DATABASE_URL"])
        return Settings.from_env(
            env,
            database_url=urlunsplit(url._replace(path=f"/{self.database}")),
            topic_prefix=f"t{self.tag}.frames",
            group_prefix=f"t{self.tag}",
            batch_timeout_ms=50,
            **overrides,
        )

    @property
    def admin(self) -> Settings:
        return self.settings("admin")

    @property
    def publisher(self) -> Settings:
        return self.settings("publisher")

    @property
    def event_store(self) -> Settings:
        return self.settings("event-store")

    @property
    def projections(self) -> Settings:
        return self.settings("projections")

    def secrets(self) -> list[str]:
        """Every password a role's settings hold: none may ever be printed."""
        out = []
        for role in ROLES:
            s = self.settings(role)
            out += [s.kafka.sasl_password.get(), urlsplit(s.database.url.get()).password or ""]
        return sorted({p for p in out if p})


async def open_namespace(stack: ClusterStack) -> Namespace:
    """A fresh database (migrated over verify-full TLS), the ACLs, the topics (made by the admin)."""
    ns = Namespace(stack, uuid.uuid4().hex[:10])
    admin = ns.admin
    main_db = admin.with_overrides(database_url=stack.role_env("admin")["TRACKER_DATABASE_URL"])
    conn = await connect(main_db.database)
    try:
        await conn.execute(f'CREATE DATABASE "{ns.database}"')
    finally:
        await conn.close()
    conn = await connect(admin.database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    await asyncio.to_thread(stack.grant, admin.topics.prefix, admin.groups.prefix)
    await ensure_topics(admin.kafka, admin.topics, [*admin.topics.events, admin.topics.dlq])
    return ns


async def close_namespace(ns: Namespace) -> None:
    main_db = ns.admin.with_overrides(database_url=ns.stack.role_env("admin")["TRACKER_DATABASE_URL"])
    conn = await connect(main_db.database)
    try:
        for _ in range(40):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{ns.database}" WITH (FORCE)')
                return
            except asyncpg.exceptions.InsufficientPrivilegeError:
                # A session of the read-only query role is still closing (see the integration conftest).
                await asyncio.sleep(0.25)
    finally:
        await conn.close()
