"""The readiness probe: a broker that lists itself in a Metadata answer is ready (an open port is not).

Over the wire client of kafka_wire.py, so it also works on a secure stack's TLS + SCRAM listener.
"""

from __future__ import annotations

import struct

from .kafka_wire import API_METADATA, Credentials, KafkaConnection


def kafka_probe(
    port: int, timeout: float = 3.0, credentials: Credentials | None = None
) -> list[tuple[int, str, int]]:
    """ApiVersions + Metadata (v4..v8, no topics). Returns the brokers listed; raises OSError."""
    with KafkaConnection(port, timeout=timeout, credentials=credentials) as conn:
        version = conn.version(API_METADATA, range(4, 9))
        # Metadata v4-v8 request: topics (array, 0 = none), allow_auto_topic_creation,
        # v8+: include_cluster_authorized_operations, include_topic_authorized_operations.
        body = struct.pack(">i?", 0, False)
        if version >= 8:
            body += struct.pack(">??", False, False)
        r = conn.call(API_METADATA, version, body)
        r.take(">i")  # throttle_time_ms (v3+)
        brokers = []
        for _ in range(r.take(">i")):
            node_id = r.take(">i")
            host = r.string() or ""
            bport = r.take(">i")
            r.string()  # rack
            brokers.append((node_id, host, bport))
        return brokers
