"""Just enough of the Kafka wire protocol for a readiness probe: ApiVersions, then Metadata.

An open port is not a ready broker; a broker that lists itself in a Metadata answer is.
"""

from __future__ import annotations

import socket
import struct

from .common import HOST

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
