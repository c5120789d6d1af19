#!/usr/bin/env python3
"""Local, Docker-free service stack for detektor-tracker: Kafka (KRaft) + PostgreSQL.

Standard library only (it runs before any virtualenv exists).

    python3 compose/local/stack.py up [--only kafka|postgres]
    python3 compose/local/stack.py down [--only kafka|postgres]
    python3 compose/local/stack.py status
    python3 compose/local/stack.py reset [--all]
    python3 compose/local/stack.py start-kafka | stop-kafka [--kill]
    python3 compose/local/stack.py start-postgres | stop-postgres [--kill]
    python3 compose/local/stack.py env

Everything lives in <repo>/.stack/ (see compose/local/README.md).
"""

# ruff: noqa: E501  (long, one-line user-facing messages are kept on one line)
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

from stackctl.common import HERE, HOST, IS_ROOT, STACK, StackError, apt_install, die, log, rel, tail
from stackctl.common import env_port as _env_port
from stackctl.ports import ensure_port_free
from stackctl.proc import find_pids, proc_cmdline, proc_cwd, proc_ppid, read_pid, reap, terminate, wait_gone

# --------------------------------------------------------------------------------------------
# Kafka wire protocol (just enough for a readiness probe)
# --------------------------------------------------------------------------------------------

API_METADATA = 3
API_VERSIONS = 18


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s


def _kafka_call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> _Reader:
    client_id = b"detektor-stack-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    if not 0 < size < 64 * 1024 * 1024:
        raise OSError(f"bogus Kafka response size {size}")
    r = _Reader(_recv_exact(sock, size))
    if r.take(">i") != corr:  # response header v0: correlation_id
        raise OSError("Kafka correlation id mismatch")
    return r


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def kafka_probe(port: int, timeout: float = 3.0) -> list[tuple[int, str, int]]:
    """ApiVersions v0 + Metadata (v4..v8, no topics). Returns the brokers listed; raises OSError."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        r = _kafka_call(sock, API_VERSIONS, 0, 1, b"")
        err = r.take(">h")
        if err != 0:
            raise OSError(f"ApiVersions error code {err}")
        ranges = {}
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            ranges[key] = (lo, hi)
        if API_METADATA not in ranges:
            raise OSError("broker does not advertise Metadata")
        lo, hi = ranges[API_METADATA]
        usable = [v for v in range(8, 3, -1) if lo <= v <= hi]
        if not usable:
            raise OSError(f"broker supports Metadata v{lo}-v{hi}, probe speaks v4-v8")
        version = usable[0]
        # Metadata v4-v8 request: topics (array, 0 = none), allow_auto_topic_creation,
        # v8+: include_cluster_authorized_operations, include_topic_authorized_operations.
        body = struct.pack(">i?", 0, False)
        if version >= 8:
            body += struct.pack(">??", False, False)
        r = _kafka_call(sock, API_METADATA, version, 2, body)
        r.take(">i")  # throttle_time_ms (v3+)
        brokers = []
        for _ in range(r.take(">i")):
            node_id = r.take(">i")
            host = r.string() or ""
            bport = r.take(">i")
            r.string()  # rack
            brokers.append((node_id, host, bport))
        return brokers


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------

POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"


def _pom_property(name: str) -> str:
    m = re.search(rf"<{re.escape(name)}>\s*(\d[^<\s]*)\s*</{re.escape(name)}>", POM.read_text())
    if not m:
        die(f"{rel(POM)} has no <{name}> property")
    return m.group(1)


class Kafka:
    name = "kafka"

    def __init__(self) -> None:
        self.version = os.environ.get("STACK_KAFKA_VERSION", "").strip() or _pom_property("kafka.version")
        # Below Linux's ephemeral range (32768-60999): a service port inside it can
        # be taken, while the service is down, by a client's own outgoing socket
        # (even a TCP self-connect to that very port), and the restart then fails
        # with "address already in use".
        self.port = _env_port("STACK_KAFKA_PORT", 29092)
        self.controller_port = _env_port("STACK_KAFKA_CONTROLLER_PORT", 29093)
        if self.port == self.controller_port:
            die("STACK_KAFKA_PORT and STACK_KAFKA_CONTROLLER_PORT must differ")
        self.home = STACK / "kafka"
        self.data = self.home / "data"
        self.logs = self.home / "logs"
        self.props = self.home / "server.properties"
        self.pidfile = self.home / "kafka.pid"
        self.portfile = self.home / "kafka.port"
        self.out = self.logs / "kafka.out"
        self.libs = STACK / f"kafka-libs-{self.version}"

    # -- jars -------------------------------------------------------------------------------
    def _libs_stamp(self) -> str:
        h = hashlib.sha256(POM.read_bytes())
        h.update(self.version.encode())
        return h.hexdigest()

    def ensure_libs(self) -> None:
        marker = self.libs / ".complete"
        if marker.is_file() and marker.read_text().strip() == self._libs_stamp():
            return
        ensure_java()
        if not shutil.which("mvn"):
            apt_install("maven", why="Maven is needed once to fetch the Kafka jars")
        tmp = STACK / f".kafka-libs-{self.version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"fetching Kafka {self.version} jars with Maven into {rel(self.libs)} (first run only) ...")
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-Dkafka.version={self.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ]
        r = subprocess.run(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not any(tmp.glob(f"kafka_2.13-{self.version}.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"Maven could not fetch Kafka {self.version} (exit {r.returncode}):\n{r.stdout[-4000:]}")
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        marker.write_text(self._libs_stamp() + "\n")

    def java_base(self) -> list[str]:
        return [
            java_bin(),
            "-cp",
            str(self.libs / "*"),
            f"-Dlog4j2.configurationFile={LOG4J}",
            f"-Dkafka.logs.dir={self.logs}",
        ]

    # -- config -----------------------------------------------------------------------------
    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        cfg = f"""# Generated by compose/local/stack.py on every start - edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={HOST}:{self.controller_port}
listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{self.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.data}
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a kill -9 the restarted broker must wait for its old registration's session to expire
# (default 9 s); a shorter session makes crash/restart fault-injection tests faster.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
auto.create.topics.enable=true
delete.topic.enable=true
log.retention.hours=168
"""
        if not self.props.exists() or self.props.read_text() != cfg:
            self.props.write_text(cfg)

    def ensure_formatted(self) -> None:
        # (A later change of STACK_KAFKA_CONTROLLER_PORT is fine for this single-voter quorum: checked.)
        if (self.data / "meta.properties").is_file():
            return
        shutil.rmtree(self.data, ignore_errors=True)
        cluster_id = random_kafka_uuid()
        log(f"formatting KRaft storage (cluster id {cluster_id}) ...")
        r = subprocess.run(
            [
                *self.java_base(),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.props),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if r.returncode != 0:
            die(f"kafka StorageTool format failed (exit {r.returncode}):\n{r.stdout[-3000:]}")

    # -- state ------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """Our broker JVM(s): the pid file's process if its argv names our server.properties, plus orphans."""
        found = set(find_pids("kafka.Kafka", str(self.props)))
        pid = read_pid(self.pidfile)
        if pid and (argv := proc_cmdline(pid)) and str(self.props) in argv:
            found.add(pid)
        return sorted(found)

    def running_port(self) -> int:
        try:
            return int(self.portfile.read_text().strip())
        except (OSError, ValueError):
            return self.port

    def healthy(self, port: int | None = None) -> bool:
        try:
            return bool(kafka_probe(port or self.running_port(), timeout=2.0))
        except (OSError, struct.error, IndexError):
            return False

    def address(self) -> str:
        return f"{HOST}:{self.running_port()}"

    def describe(self) -> str:
        return f"kafka      {self.address():<16} (Kafka {self.version}, KRaft)"

    # -- lifecycle --------------------------------------------------------------------------
    def up(self) -> None:
        pids = self.pids()
        if pids:
            rport = self.running_port()
            if rport != self.port:
                die(
                    f"this stack's Kafka is already running on port {rport}, not {self.port}; "
                    f"run 'python3 compose/local/stack.py stop-kafka' first"
                )
            if self.healthy():
                return
            log(f"Kafka pid {pids[0]} is running but not answering yet; waiting ...")
            self.wait_ready(pids[0])
            return
        self.pidfile.unlink(missing_ok=True)
        ensure_port_free(self.port, "Kafka broker", "STACK_KAFKA_PORT")
        ensure_port_free(self.controller_port, "Kafka KRaft controller", "STACK_KAFKA_CONTROLLER_PORT")
        self.ensure_libs()
        self.write_config()
        self.ensure_formatted()
        log(f"starting Kafka {self.version} on {HOST}:{self.port} ...")
        cmd = [
            *self.java_base()[:1],
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            *self.java_base()[1:],
            "kafka.Kafka",
            str(self.props),
        ]
        with open(self.out, "ab") as out:
            out.write(
                f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting Kafka {self.version}\n".encode()
            )
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
                close_fds=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        self.portfile.write_text(f"{self.port}\n")
        self.wait_ready(proc.pid)

    def wait_ready(self, pid: int) -> None:
        timeout = float(os.environ.get("STACK_KAFKA_TIMEOUT", "90"))
        deadline = time.monotonic() + timeout
        last_err = ""
        while time.monotonic() < deadline:
            reap()
            if proc_cmdline(pid) is None:
                die(
                    f"Kafka exited during startup. Last lines of {rel(self.out)}:\n{tail(self.out, 25)}\n"
                    f"Last lines of {rel(self.logs / 'server.log')}:\n{tail(self.logs / 'server.log', 25)}"
                )
            try:
                brokers = kafka_probe(self.port, timeout=2.0)
                if brokers:
                    return
                last_err = "Metadata listed no brokers"
            except (OSError, struct.error, IndexError) as e:
                last_err = str(e)
            time.sleep(0.5)
        die(
            f"Kafka (pid {pid}) did not answer a Metadata request on {HOST}:{self.port} within {timeout:.0f}s "
            f"({last_err}); it is left running for inspection (stop it with 'stack.py stop-kafka'). "
            f"Last lines of {rel(self.logs / 'server.log')}:\n{tail(self.logs / 'server.log', 30)}"
        )

    def down(self, kill: bool = False) -> None:
        pids = self.pids()
        if pids:
            log(f"stopping Kafka (pid {' '.join(map(str, pids))}){' with SIGKILL' if kill else ''} ...")
            terminate(pids, "Kafka", timeout=30, first_signal=signal.SIGKILL if kill else signal.SIGTERM)
        self.pidfile.unlink(missing_ok=True)
        self.portfile.unlink(missing_ok=True)

    def status(self) -> tuple[bool, str]:
        pids = self.pids()
        if not pids:
            return False, f"kafka      stopped   {self.address()}"
        if self.healthy():
            return (
                True,
                f"kafka      running   pid {pids[0]:<7} {self.address():<16} (Kafka {self.version}, KRaft)",
            )
        return (
            False,
            f"kafka      NOT READY pid {pids[0]:<7} {self.address()} (process alive, no Metadata answer)",
        )

    def wipe(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def random_kafka_uuid() -> str:
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not s.startswith("-"):
            return s


def java_bin() -> str:
    jh = os.environ.get("JAVA_HOME")
    if jh and (Path(jh) / "bin" / "java").is_file():
        return str(Path(jh) / "bin" / "java")
    return shutil.which("java") or "java"


def ensure_java() -> None:
    if not shutil.which("java") and not (os.environ.get("JAVA_HOME") and Path(java_bin()).is_file()):
        apt_install("openjdk-17-jre-headless", why="Kafka needs Java 17+")


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


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


class Postgres:
    name = "postgres"
    user, password, db = "tracker", "tracker", "tracker"

    def __init__(self) -> None:
        self.port = _env_port("STACK_PG_PORT", 25432)
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

    def run_owner(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        # Output goes to a temp file, not a pipe: a daemon that inherits a pipe would make us hang.
        out = self.home / ".cmd.out"
        with open(out, "w+b") as f:
            with contextlib.suppress(OSError):
                if IS_ROOT:
                    os.chown(out, *self._pg_ids())
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

    def _pg_ids(self) -> tuple[int, int]:
        import pwd

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

    def prepare_home(self) -> None:
        _ = self.bindir  # install first: the package creates the postgres user
        for d in (self.home, self.home / "log", self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
        if IS_ROOT:
            uid, gid = self._pg_ids()
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
        self.prepare_home()

    def pid(self) -> int | None:
        """postmaster pid if our cluster is running (postmaster.pid + live process whose argv names our data dir)."""
        pid = read_pid(self.data / "postmaster.pid")
        if pid and (argv := proc_cmdline(pid)) and str(self.data) in " ".join(argv):
            return pid
        orphans = find_pids("-D", str(self.data))
        orphans = [
            p for p in orphans if Path((proc_cmdline(p) or [""])[0]).name in ("postgres", "postmaster")
        ]
        return orphans[0] if orphans else None

    def running_port(self) -> int:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return self.port

    def dsn(self, port: int | None = None) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{port or self.running_port()}/{self.db}"

    def psql(
        self, sql: str, db: str = "postgres", user: str = "postgres", port: int | None = None
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGCONNECT_TIMEOUT="3", PGPASSWORD="")
        env.pop("PGSERVICE", None)
        return subprocess.run(
            [
                self.bin("psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                HOST,
                "-p",
                str(port or self.running_port()),
                "-U",
                user,
                "-d",
                db,
                "-c",
                sql,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    def healthy(self) -> bool:
        port = self.running_port()
        r = subprocess.run(
            [
                self.bin("pg_isready"),
                "-q",
                "-h",
                HOST,
                "-p",
                str(port),
                "-t",
                "2",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.psql("select 1").stdout.strip() == "1"
        return False

    def server_version(self) -> str:
        with contextlib.suppress(Exception):
            v = self.psql("show server_version").stdout.strip()
            if v:
                return v.split()[0]
        return "?"

    def describe(self) -> str:
        return f"postgresql {self.dsn()}  (PostgreSQL {self.server_version()})"

    # -- lifecycle --------------------------------------------------------------------------
    def write_config(self) -> None:
        sock_ok = len(str(self.sockdir / f".s.PGSQL.{self.port}")) <= 100
        if not sock_ok:
            log(f"NOTE: {self.sockdir} is too long for a Unix socket path; PostgreSQL listens on TCP only")
        conf = f"""# Generated by compose/local/stack.py on every start - edit the script, not this file.
listen_addresses = '{HOST}'
port = {self.port}
unix_socket_directories = '{self.sockdir if sock_ok else ""}'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
"""
        (self.data / "stack.conf").write_text(conf)
        main = self.data / "postgresql.conf"
        text = main.read_text()
        if "include_if_exists = 'stack.conf'" not in text:
            main.write_text(
                text + "\n# detektor-tracker local stack settings (compose/local/stack.py)\n"
                "include_if_exists = 'stack.conf'\n"
            )
        if IS_ROOT:
            os.chown(self.data / "stack.conf", *self._pg_ids())

    def ensure_initdb(self) -> None:
        if (self.data / "PG_VERSION").is_file():
            return
        shutil.rmtree(self.data, ignore_errors=True)
        log(f"initdb {self.data} ...")
        base = [
            self.bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]
        r = self.run_owner([*base, "--locale=C.UTF-8"])
        if r.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            r = self.run_owner([*base, "--no-locale"])
        if r.returncode != 0:
            die(f"initdb failed (exit {r.returncode}):\n{r.stdout[-3000:]}")

    def up(self) -> None:
        pid = self.pid()
        if pid:
            rport = self.running_port()
            if rport != self.port:
                die(
                    f"this stack's PostgreSQL is already running on port {rport}, not {self.port}; "
                    f"run 'python3 compose/local/stack.py stop-postgres' first"
                )
            if self.healthy():
                self.ensure_db()
                return
            log(f"PostgreSQL pid {pid} is running but not answering yet; waiting ...")
            self.wait_ready(pid)
            self.ensure_db()
            return
        ensure_port_free(self.port, "PostgreSQL", "STACK_PG_PORT")
        self.prepare_home()
        self.ensure_initdb()
        self.write_config()
        self.clear_stale_lock()
        log(f"starting PostgreSQL on {HOST}:{self.port} ...")
        r = self.run_owner(
            [
                self.bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        if r.returncode != 0:
            die(
                f"pg_ctl start failed (exit {r.returncode}): {r.stdout.strip()[-1500:]}\n"
                f"Last lines of {rel(self.logfile)}:\n{tail(self.logfile, 25)}"
            )
        pid = self.pid()
        if not pid:
            die(f"PostgreSQL did not stay up. Last lines of {rel(self.logfile)}:\n{tail(self.logfile, 25)}")
        self.wait_ready(pid)
        self.ensure_db()

    def clear_stale_lock(self) -> None:
        """Remove postmaster.pid after a crash (kill -9) when no process of this cluster is left.

        PostgreSQL handles a stale lock file itself, unless the dead postmaster's pid still exists as an
        unreaped zombie (seen when PID 1 reaps lazily): then it refuses to start until the zombie is gone.
        """
        lock = self.data / "postmaster.pid"
        if not lock.is_file() or self.pid():
            return
        left = [p for p in find_pids() if proc_cwd(p) == self.data]
        if left:
            die(
                f"PostgreSQL processes {' '.join(map(str, left))} still use {self.data} without a postmaster; "
                f"stop them (kill {' '.join(map(str, left))}) and retry"
            )
        log("removing stale postmaster.pid left by a crashed PostgreSQL")
        lock.unlink()
        for sock_lock in self.sockdir.glob(".s.PGSQL.*.lock"):
            pid = read_pid(sock_lock)
            if pid is None or proc_cmdline(pid) is None:
                sock_lock.unlink(missing_ok=True)
                Path(str(sock_lock)[: -len(".lock")]).unlink(missing_ok=True)

    def wait_ready(self, pid: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if not self.pid():
                break
            time.sleep(0.3)
        die(
            f"PostgreSQL (pid {pid}) did not accept connections on {HOST}:{self.running_port()}. "
            f"Last lines of {rel(self.logfile)}:\n{tail(self.logfile, 25)}"
        )

    def ensure_db(self) -> None:
        role_sql = f"""DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{self.user}') THEN
    CREATE ROLE {self.user} LOGIN CREATEDB CREATEROLE PASSWORD '{self.password}';
  ELSE
    ALTER ROLE {self.user} LOGIN CREATEDB CREATEROLE PASSWORD '{self.password}';
  END IF;
END$$;"""
        r = self.psql(role_sql)
        if r.returncode != 0:
            die(f"could not create role {self.user}: {r.stderr.strip()}")
        r = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.db}'")
        if r.returncode != 0:
            die(f"could not query databases: {r.stderr.strip()}")
        if r.stdout.strip() != "1":
            r = self.psql(f"CREATE DATABASE {self.db} OWNER {self.user} ENCODING 'UTF8' TEMPLATE template0")
            if r.returncode != 0 and "already exists" not in r.stderr:
                die(f"could not create database {self.db}: {r.stderr.strip()}")
        r = self.psql("select 1", db=self.db, user=self.user)
        if r.returncode != 0:
            die(f"cannot connect as {self.dsn()}: {r.stderr.strip()}")

    def down(self, kill: bool = False) -> None:
        pid = self.pid()
        if not pid:
            return
        log(f"stopping PostgreSQL (pid {pid}){' with SIGKILL' if kill else ''} ...")
        if kill:
            # Crash-like stop for fault injection: postmaster and all backends die at once.
            pids = [pid] + [p for p in find_pids() if proc_ppid(p) == pid]
            terminate(pids, "PostgreSQL", timeout=10, first_signal=signal.SIGKILL)
            return
        if (self.data / "postmaster.pid").is_file():
            r = self.run_owner(
                [self.bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"]
            )
            if r.returncode == 0 and not self.pid():
                wait_gone([pid])
                return
            log(f"pg_ctl stop -m fast did not finish ({r.stdout.strip()[-300:]}); trying immediate")
            self.run_owner(
                [
                    self.bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "15",
                    "stop",
                ]
            )
        if pid := self.pid():
            terminate([pid], "PostgreSQL", timeout=15, first_signal=signal.SIGQUIT)

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if not pid:
            return False, f"postgresql stopped   {HOST}:{self.port}"
        if self.healthy():
            return True, (
                f"postgresql running   pid {pid:<7} {self.dsn()}  (PostgreSQL {self.server_version()})"
            )
        return (
            False,
            f"postgresql NOT READY pid {pid:<7} {HOST}:{self.running_port()} (process alive, no connection)",
        )

    def wipe(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        if self.home != STACK / "pg":
            with contextlib.suppress(OSError):
                self.home.parent.rmdir()
        self.pointer.unlink(missing_ok=True)
        if (STACK / "pg").is_symlink():
            (STACK / "pg").unlink()
        shutil.rmtree(STACK / "pg", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


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


def services(only: str | None) -> list[Kafka | Postgres]:
    out: list[Kafka | Postgres] = []
    if only in (None, "kafka"):
        out.append(Kafka())
    if only in (None, "postgres", "postgresql", "pg"):
        out.append(Postgres())
    return out


def cmd_up(only: str | None) -> int:
    t0 = time.monotonic()
    svcs = services(only)
    with stack_lock():
        # Postgres first: its checks are quick, so a port clash there is reported before Kafka's slower start.
        for svc in sorted(svcs, key=lambda s: s.name != "postgres"):
            svc.up()
    for svc in svcs:
        print(svc.describe())
    log(f"up in {time.monotonic() - t0:.1f}s")
    return 0


def cmd_down(only: str | None, kill: bool = False) -> int:
    with stack_lock():
        for svc in services(only):
            svc.down(kill=kill)
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
            svc.down()
        for svc in services(None):
            svc.wipe()
        if wipe_all:
            for p in STACK.iterdir():
                if p.name != ".lock":
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
    log(
        f"stack data removed ({rel(STACK)}{' incl. cached Kafka jars' if wipe_all else '; cached Kafka jars kept'})"
    )
    return 0


def cmd_env() -> int:
    k, p = Kafka(), Postgres()
    print(f"STACK_KAFKA_BOOTSTRAP={k.address()}")
    print(f"STACK_PG_DSN={p.dsn()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stack.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, hlp in (("up", "start services (idempotent)"), ("down", "stop services")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--only", choices=["kafka", "postgres"], help="just this service")
    sub.add_parser("status", help="show state; exit 0 when all running, 3 otherwise")
    p = sub.add_parser("reset", help="down + delete all data (keeps cached Kafka jars unless --all)")
    p.add_argument("--all", action="store_true", help="also delete the cached Kafka jars")
    for svc in ("kafka", "postgres"):
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


if __name__ == "__main__":
    sys.exit(main())
