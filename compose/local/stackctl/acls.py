"""The ACLs of a secure stack: what each of the tracker's principals may do, and CreateAcls to grant it.

The brokers run StandardAuthorizer with no ACL meaning no access, so a principal can do exactly what is
granted here, for one namespace (topic prefix P, group prefix G):

| principal             | may                                                                       |
|-----------------------|---------------------------------------------------------------------------|
| `tracker-publisher`   | WRITE P.camera, P.processing (idempotent producers need nothing more)     |
| `tracker-event-store` | READ P.camera, P.processing and group G.event-store; WRITE P.dlq          |
| `tracker-projections` | READ P.camera, P.processing and group G.projections; WRITE P.dlq          |
| `tracker-admin`       | CREATE, DESCRIBE the three topics (`tracker topics`); DESCRIBE both groups |

READ and WRITE imply DESCRIBE. Every pattern is LITERAL, on the exact names. `up` grants the default
namespace (detektor.frames, tracker); `stack.py grant --topic-prefix P --group-prefix G` grants another.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .common import die, log
from .kafka_wire import API_CREATE_ACLS, Credentials, KafkaConnection, compact_string, uvarint

TOPIC, GROUP = 2, 3  # resource types
LITERAL = 3  # pattern type
READ, WRITE, CREATE, DESCRIBE = 3, 4, 5, 8  # operations
ALLOW = 3  # permission type
OPERATION_NAMES = {READ: "READ", WRITE: "WRITE", CREATE: "CREATE", DESCRIBE: "DESCRIBE"}

DEFAULT_TOPIC_PREFIX = "detektor.frames"
DEFAULT_GROUP_PREFIX = "tracker"


class Acl(NamedTuple):
    principal: str
    resource_type: int
    name: str
    operation: int

    def __str__(self) -> str:
        kind = "topic" if self.resource_type == TOPIC else "group"
        return f"{self.principal}: {OPERATION_NAMES[self.operation]} {kind} {self.name}"


def tracker_acls(topic_prefix: str, group_prefix: str) -> list[Acl]:
    camera, processing, dlq = (f"{topic_prefix}.{t}" for t in ("camera", "processing", "dlq"))
    event_store, projections = f"{group_prefix}.event-store", f"{group_prefix}.projections"
    acls = [Acl("tracker-publisher", TOPIC, t, WRITE) for t in (camera, processing)]
    for principal, group in (("tracker-event-store", event_store), ("tracker-projections", projections)):
        acls += [Acl(principal, TOPIC, t, READ) for t in (camera, processing)]
        acls += [Acl(principal, GROUP, group, READ), Acl(principal, TOPIC, dlq, WRITE)]
    for op in (CREATE, DESCRIBE):
        acls += [Acl("tracker-admin", TOPIC, t, op) for t in (camera, processing, dlq)]
    acls += [Acl("tracker-admin", GROUP, g, DESCRIBE) for g in (event_store, projections)]
    return acls


def create_acls(port: int, credentials: Credentials, acls: list[Acl]) -> None:
    """CreateAcls (v2-v3, flexible) on the broker at ``port``; an ACL that exists already is no error."""
    with KafkaConnection(port, timeout=10.0, credentials=credentials) as conn:
        version = conn.version(API_CREATE_ACLS, range(2, 4))
        body = uvarint(len(acls) + 1)
        for acl in acls:
            body += struct.pack(">b", acl.resource_type) + compact_string(acl.name)
            body += struct.pack(">b", LITERAL)
            body += compact_string(f"User:{acl.principal}") + compact_string("*")
            body += struct.pack(">bb", acl.operation, ALLOW) + uvarint(0)
        body += uvarint(0)
        r = conn.call(API_CREATE_ACLS, version, body, flexible=True)
        r.take(">i")  # throttle_time_ms
        failed = []
        for acl in acls[: r.uvarint() - 1]:
            err, message = r.take(">h"), r.compact_string()
            r.skip_tags()
            if err != 0:
                failed.append(f"{acl} ({message or f'error {err}'})")
    if failed:
        die(f"the broker refused {len(failed)} ACL(s): {'; '.join(failed[:3])}")
    log(f"granted {len(acls)} ACLs")
