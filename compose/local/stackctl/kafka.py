"""How Kafka is run: KRaft nodes (broker + controller each) as plain JVM processes.

One node (node.id=1) by default, three with STACK_BROKERS=3; server.properties for each mode comes from
kafka_config.py. The jars come from Maven Central once (pom.xml next to stack.py) into
<STACK_DIR>/kafka-libs-<version>/, shared by every mode. A node's folder (<stack>/kafka/ for the single
node, <stack>/kafka-<id>/ in a cluster) holds server.properties (written on every start), the data and the
logs; kafka.pid and kafka.port record the running node. A node is ready when it lists itself in a Metadata
answer (kafka_probe.py); the stack is up when every node lists every node.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import uuid
from pathlib import Path

from .acls import DEFAULT_GROUP_PREFIX, DEFAULT_TOPIC_PREFIX, create_acls, tracker_acls
from .common import BROKERS, HOST, SECURE, STACK, die, env_port, error_lines, log, rel, tail
from .kafka_config import NodeAddress, server_properties
from .kafka_jars import KafkaJars, pom_property
from .kafka_probe import kafka_probe
from .kafka_wire import Credentials
from .ports import ensure_port_free
from .proc import find_pids, proc_cmdline, read_pid, reap, terminate
from .security import KAFKA_USERS, Security
from .service import Port, Service


class KafkaNode:
    """One KRaft node (broker + controller): its ports, its folder and its JVM."""

    def __init__(self, address: NodeAddress, home: Path) -> None:
        self.address = address
        self.id, self.port, self.controller_port = address
        self.home = home
        self.data = home / "data"
        self.logs = home / "logs"
        self.props = home / "server.properties"
        self.pidfile = home / "kafka.pid"
        self.portfile = home / "kafka.port"
        self.out = self.logs / "kafka.out"

    def pids(self) -> list[int]:
        """Its JVM(s): the pid file's process if its argv names our server.properties, plus orphans."""
        found = set(find_pids("kafka.Kafka", str(self.props)))
        pid = read_pid(self.pidfile)
        if pid and (argv := proc_cmdline(pid)) and str(self.props) in argv:
            found.add(pid)
        return sorted(found)

    def pid(self) -> int | None:
        pids = self.pids()
        return pids[0] if pids else None

    def running_port(self) -> int:
        try:
            return int(self.portfile.read_text().strip())
        except (OSError, ValueError):
            return self.port

    def cluster_id(self) -> str | None:
        """The cluster id its storage was formatted with (None: not formatted)."""
        try:
            text = (self.data / "meta.properties").read_text()
        except OSError:
            return None
        m = re.search(r"^cluster\.id=(\S+)", text, re.M)
        return m.group(1) if m else None


class Kafka(Service):
    name = label = "kafka"
    title = "Kafka"
    env_var = "STACK_KAFKA_BOOTSTRAP"
    no_answer = "no Metadata answer"

    def __init__(self) -> None:
        self.version = os.environ.get("STACK_KAFKA_VERSION", "").strip() or pom_property("kafka.version")
        # Below Linux's ephemeral range (32768-60999): a service port inside it can
        # be taken, while the service is down, by a client's own outgoing socket
        # (even a TCP self-connect to that very port), and the restart then fails
        # with "address already in use".
        self.port = env_port("STACK_KAFKA_PORT", 29092)
        self.controller_port = env_port("STACK_KAFKA_CONTROLLER_PORT", 29093)
        # Node i (from 1) listens on STACK_KAFKA_PORT + 2(i-1) and STACK_KAFKA_CONTROLLER_PORT + 2(i-1).
        addresses = [
            NodeAddress(i + 1, self.port + 2 * i, self.controller_port + 2 * i) for i in range(BROKERS)
        ]
        ports = [p for a in addresses for p in (a.port, a.controller_port)]
        if len(set(ports)) != len(ports):
            die(
                "STACK_KAFKA_PORT and STACK_KAFKA_CONTROLLER_PORT must differ"
                + (f" (and, for {BROKERS} nodes, so must each + 2 and + 4)" if BROKERS > 1 else "")
            )
        if BROKERS == 1:
            self.nodes = [KafkaNode(addresses[0], STACK / "kafka")]
        else:
            self.nodes = [KafkaNode(a, STACK / f"kafka-{a.id}") for a in addresses]
        self.security = Security() if SECURE else None
        self.jars = KafkaJars(self.version)

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        die(f"--node {node_id}: this stack's Kafka nodes are 1-{len(self.nodes)}")

    def java_base(self, node: KafkaNode) -> list[str]:
        return self.jars.java_base(node.logs)

    # -- config -----------------------------------------------------------------------------
    def write_config(self, node: KafkaNode) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        node.logs.mkdir(parents=True, exist_ok=True)
        cfg = server_properties(node.address, [n.address for n in self.nodes], node.data, self.security)
        if not node.props.exists() or node.props.read_text() != cfg:
            node.props.write_text(cfg)
        if self.security is not None:
            os.chmod(node.props, 0o600)  # it holds the broker's password

    def ensure_formatted(self) -> None:
        """Format the storage of every node not formatted yet, all with the cluster's one id.

        One node: a dynamic quorum of itself (--standalone; a later change of the controller port is
        fine, checked). A cluster: the static quorum of controller.quorum.voters. A secure stack's
        SCRAM credentials go in here, with the bootstrap metadata: nothing can authenticate before.
        """
        todo = [n for n in self.nodes if n.cluster_id() is None]
        if not todo:
            return
        known = [cid for n in self.nodes if (cid := n.cluster_id())]
        cluster_id = known[0] if known else random_kafka_uuid()
        which = " ".join(str(n.id) for n in todo)
        log(f"formatting KRaft storage of node(s) {which} (cluster id {cluster_id}) ...")
        extra = ["--standalone"] if len(self.nodes) == 1 else []
        if self.security is not None:
            for user in KAFKA_USERS:
                pw = self.security.password("kafka", user)
                extra += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={pw}]"]
        procs = []
        for n in todo:
            shutil.rmtree(n.data, ignore_errors=True)
            cmd = [*self.java_base(n), "kafka.tools.StorageTool", "format", "-t", cluster_id]
            cmd += ["-c", str(n.props), *extra]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for p in procs:
            out = p.communicate()[0]
            if p.returncode != 0:
                die(f"kafka StorageTool format failed (exit {p.returncode}):\n{out[-3000:]}")

    # -- state ------------------------------------------------------------------------------
    def ports(self) -> list[Port]:
        out = []
        for n in self.nodes:
            which = f" node {n.id}" if len(self.nodes) > 1 else ""
            out += [
                Port(n.port, f"Kafka broker{which}", "STACK_KAFKA_PORT"),
                Port(n.controller_port, f"Kafka KRaft controller{which}", "STACK_KAFKA_CONTROLLER_PORT"),
            ]
        return out

    def pid(self) -> int | None:
        pids = [p for n in self.nodes if (p := n.pid())]
        return pids[0] if pids else None

    def running_port(self) -> int:
        return self.nodes[0].running_port()

    def credentials(self) -> Credentials | None:
        """How the stack authenticates to a secure broker (None: plaintext)."""
        if self.security is None:
            return None
        return Credentials(self.security.ca, "stack-admin", self.security.password("kafka", "stack-admin"))

    def node_ready(self, node: KafkaNode, *, everyone: bool = False) -> bool:
        """Whether ``node`` answers Metadata listing itself (``everyone``: listing every node)."""
        if self.security is not None and not self.security.passwords_file.is_file():
            return False
        try:
            brokers = kafka_probe(node.running_port(), timeout=2.0, credentials=self.credentials())
        except (OSError, struct.error, IndexError):
            return False
        listed = {b[0] for b in brokers}
        return listed >= ({n.id for n in self.nodes} if everyone else {node.id})

    def healthy(self) -> bool:
        return all(self.node_ready(n, everyone=True) for n in self.nodes)

    def address(self) -> str:
        return ",".join(f"{HOST}:{n.running_port()}" for n in self.nodes)

    def stopped_address(self) -> str:
        return self.address()  # the ports of the last start while kafka.port is left (after a crash)

    def summary(self) -> str:
        nodes = f"{len(self.nodes)} nodes" if len(self.nodes) > 1 else ""
        what = ", ".join(w for w in ("KRaft", nodes, "SASL_SSL" if self.security else "") if w)
        return f"{self.address():<16} (Kafka {self.version}, {what})"

    def status(self) -> tuple[bool, str]:
        if len(self.nodes) == 1:
            return super().status()
        states = []
        for n in self.nodes:
            state = "stopped" if n.pid() is None else "ready" if self.node_ready(n) else "starting"
            states.append(f"{n.id}:{state}")
        if all(s.endswith("ready") for s in states) and self.healthy():
            return True, f"{self.label:<10} running   nodes {' '.join(states)}  {self.summary()}"
        if all(s.endswith("stopped") for s in states):
            return False, f"{self.label:<10} stopped   {self.stopped_address()}"
        return False, f"{self.label:<10} DEGRADED  nodes {' '.join(states)}  {self.address()}"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, node_id: int | None = None) -> None:
        """Start every node that is not running (or just ``node_id``) and wait until they answer.

        Nodes are launched together, then awaited together: a node of a cluster answers only once a
        quorum of controllers runs. A whole stack is up when every node lists every node; one node
        restarted alone is up when it lists itself.
        """
        nodes = self.nodes if node_id is None else [self.node(node_id)]
        for n in nodes:
            if n.pid() is not None and n.running_port() != n.port:
                die(
                    f"this stack's Kafka node {n.id} is already running on port {n.running_port()}, "
                    f"not {n.port}; run 'python3 compose/local/stack.py stop-kafka' first"
                )
        down = [n for n in nodes if n.pid() is None]
        if down:
            self.launch_nodes(down)
        elif not all(self.node_ready(n) for n in nodes):
            log("Kafka is running but not answering yet; waiting ...")
        self.wait_nodes(nodes, everyone=node_id is None)
        if node_id is None:
            self.provision()

    def launch(self) -> None:
        self.launch_nodes(self.nodes)
        self.wait_nodes(self.nodes, everyone=True)

    def launch_nodes(self, nodes: list[KafkaNode]) -> None:
        for n in nodes:
            n.pidfile.unlink(missing_ok=True)
        for port in self.ports():
            if any(port.number in (n.port, n.controller_port) for n in nodes):
                ensure_port_free(port.number, port.what, port.env_var)
        self.jars.ensure()
        if self.security is not None:
            self.security.ensure()
        for n in self.nodes:
            self.write_config(n)
        self.ensure_formatted()
        heap = ["-Xms256m", "-Xmx512m"] if len(self.nodes) == 1 else ["-Xms128m", "-Xmx256m"]
        for n in nodes:
            which = f" (node {n.id})" if len(self.nodes) > 1 else ""
            log(f"starting Kafka {self.version} on {HOST}:{n.port}{which} ...")
            java, *rest = self.java_base(n)
            gc = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]
            cmd = [java, *heap, *gc, *rest, "kafka.Kafka", str(n.props)]
            with open(n.out, "ab") as out:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                out.write(f"\n===== {stamp} starting Kafka {self.version}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=n.home,
                    start_new_session=True,
                    close_fds=True,
                )
            n.pidfile.write_text(f"{proc.pid}\n")
            n.portfile.write_text(f"{n.port}\n")

    def wait_ready(self, pid: int) -> None:
        self.wait_nodes(self.nodes, everyone=True)

    def wait_nodes(self, nodes: list[KafkaNode], *, everyone: bool) -> None:
        timeout = float(os.environ.get("STACK_KAFKA_TIMEOUT", "90"))
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while time.monotonic() < deadline:
            reap()
            for n in waiting:
                if n.pid() is None:
                    die(
                        f"Kafka{f' node {n.id}' if len(self.nodes) > 1 else ''} exited during startup. "
                        f"Its last errors ({rel(n.logs / 'server.log')}):\n"
                        f"{error_lines(n.logs / 'server.log')}\n"
                        f"Last lines of {rel(n.out)}:\n{tail(n.out, 25)}\n"
                        f"Last lines of {rel(n.logs / 'server.log')}:\n{tail(n.logs / 'server.log', 25)}"
                    )
            waiting = [n for n in waiting if not self.node_ready(n, everyone=everyone)]
            if not waiting:
                return
            time.sleep(0.5)
        n = waiting[0]
        die(
            f"Kafka node {n.id} (pid {n.pid()}) did not answer a Metadata request listing "
            f"{'every node' if everyone and len(self.nodes) > 1 else 'itself'} on {HOST}:{n.port} within "
            f"{timeout:.0f}s; it is left running for inspection (stop it with 'stack.py stop-kafka'). "
            f"Last lines of {rel(n.logs / 'server.log')}:\n{tail(n.logs / 'server.log', 30)}"
        )

    def provision(self) -> None:
        """A secure stack: the ACLs of the default namespace (acls.py)."""
        if self.security is not None:
            self.grant(DEFAULT_TOPIC_PREFIX, DEFAULT_GROUP_PREFIX)

    def grant(self, topic_prefix: str, group_prefix: str) -> None:
        credentials = self.credentials()
        if credentials is None:
            die("ACLs need a secure stack (STACK_SECURE=1): a plaintext stack authorizes everything")
        ready = [n for n in self.nodes if self.node_ready(n)]
        if not ready:
            die("Kafka is not running; run 'stack.py up' first")
        try:
            create_acls(ready[0].running_port(), credentials, tracker_acls(topic_prefix, group_prefix))
        except (OSError, struct.error, IndexError) as e:
            die(f"cannot create ACLs on {HOST}:{ready[0].running_port()}: {e}")

    def stop(self, kill: bool = False, node_id: int | None = None) -> None:
        nodes = self.nodes if node_id is None else [self.node(node_id)]
        pids = [p for n in nodes for p in n.pids()]
        if pids:
            log(f"stopping Kafka (pid {' '.join(map(str, pids))}){' with SIGKILL' if kill else ''} ...")
            terminate(pids, "Kafka", timeout=30, first_signal=signal.SIGKILL if kill else signal.SIGTERM)
        for n in nodes:
            n.pidfile.unlink(missing_ok=True)
            n.portfile.unlink(missing_ok=True)

    def wipe(self) -> None:
        for n in self.nodes:
            shutil.rmtree(n.home, ignore_errors=True)


def random_kafka_uuid() -> str:
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not s.startswith("-"):
            return s
