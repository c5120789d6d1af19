"""The local stack's modes (compose/local/stackctl), checked without running anything: each mode's
server.properties, and the ACLs of the secure mode. The stack is standard library only, so its
package is imported from its folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "compose/local"))

from stackctl.acls import CREATE, DESCRIBE, GROUP, READ, TOPIC, WRITE, Acl, tracker_acls
from stackctl.kafka_config import NodeAddress, server_properties


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


class _Security:
    """What server_properties reads of the secure mode's Security."""

    ca = Path("/s/tls/ca.pem")
    broker_keystore = Path("/s/tls/broker.pem")

    def password(self, kind: str, user: str) -> str:
        return f"pw-{kind}-{user}"


def test_the_single_node_stack_is_the_quick_start_unchanged() -> None:
    one = NodeAddress(1, 29092, 29093)
    p = _props(server_properties(one, [one], Path("/d"), None))
    assert p["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert p["default.replication.factor"] == p["min.insync.replicas"] == "1"
    assert "authorizer.class.name" not in p and "controller.quorum.voters" not in p
    assert "log.cleaner.dedupe.buffer.size" not in p


def test_a_cluster_replicates_three_times_and_acknowledges_with_two() -> None:
    nodes = [NodeAddress(i, 29190 + 2 * i, 29191 + 2 * i) for i in (1, 2, 3)]
    p = _props(server_properties(nodes[1], nodes, Path("/d"), None))
    assert p["node.id"] == "2"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:29193,2@127.0.0.1:29195,3@127.0.0.1:29197"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29194,CONTROLLER://127.0.0.1:29195"
    for key in ("default.replication.factor", "offsets.topic.replication.factor"):
        assert p[key] == "3", key
    assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"


def test_a_secure_stack_authenticates_encrypts_and_authorizes() -> None:
    one = NodeAddress(1, 29292, 29293)
    p = _props(server_properties(one, [one], Path("/d"), _Security()))  # type: ignore[arg-type]
    assert p["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert p["inter.broker.listener.name"] == "CLIENT"
    assert p["sasl.enabled.mechanisms"] == p["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert (
        'username="broker" password="pw-kafka-broker"'
        in p["listener.name.client.scram-sha-512.sasl.jaas.config"]
    )
    assert p["listener.name.controller.ssl.client.auth"] == "required"
    assert p["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert p["allow.everyone.if.no.acl.found"] == "false" and p["auto.create.topics.enable"] == "false"
    assert p["super.users"] == "User:broker;User:stack-admin"


@pytest.mark.parametrize("prefixes", [("detektor.frames", "tracker"), ("t1.frames", "t1")])
def test_each_principal_gets_exactly_what_it_needs(prefixes: tuple[str, str]) -> None:
    t, g = prefixes
    camera, processing, dlq = f"{t}.camera", f"{t}.processing", f"{t}.dlq"
    granted = set(tracker_acls(t, g))
    expected = {
        Acl("tracker-publisher", TOPIC, camera, WRITE),
        Acl("tracker-publisher", TOPIC, processing, WRITE),
    }
    for who, group in (
        ("tracker-event-store", f"{g}.event-store"),
        ("tracker-projections", f"{g}.projections"),
    ):
        expected |= {Acl(who, TOPIC, camera, READ), Acl(who, TOPIC, processing, READ)}
        expected |= {Acl(who, GROUP, group, READ), Acl(who, TOPIC, dlq, WRITE)}
    for op in (CREATE, DESCRIBE):
        expected |= {Acl("tracker-admin", TOPIC, name, op) for name in (camera, processing, dlq)}
    expected |= {Acl("tracker-admin", GROUP, f"{g}.{x}", DESCRIBE) for x in ("event-store", "projections")}
    assert granted == expected
    assert len(tracker_acls(t, g)) == len(expected)  # no ACL twice


def test_a_node_that_exits_while_starting_is_reported_by_its_errors_not_its_shutdown(tmp_path: Path) -> None:
    from stackctl.common import error_lines

    log = tmp_path / "server.log"
    lines = [
        "[t1] INFO [BrokerServer id=3] Transition from SHUTDOWN to STARTING (kafka.server.BrokerServer)",
        "[t2] ERROR [BrokerServer id=3] Fatal error during broker startup. Prepare to shutdown",
        "java.lang.RuntimeException: Received a fatal error while waiting for the controller",
        "\tat kafka.server.BrokerServer.startup(BrokerServer.scala:564)",
        *[f"[t{i}] INFO [ReplicaManager broker=3] Shutting down {i}" for i in range(3, 200)],
    ]
    log.write_text("\n".join(lines) + "\n")
    shown = error_lines(log).splitlines()
    assert [s.strip() for s in shown] == [s.strip() for s in lines[1:4]]
    log.write_text("[t1] INFO all well\n")
    assert "no ERROR or FATAL line" in error_lines(log)
    assert "no missing.log" in error_lines(tmp_path / "missing.log")
