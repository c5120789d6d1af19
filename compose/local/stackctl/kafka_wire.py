"""Just enough of the Kafka wire protocol for the stack's own requests, over plain TCP or TLS + SASL/SCRAM.

The readiness probe (kafka_probe.py) and the ACLs of a secure stack (acls.py) need a Kafka client before
any virtualenv exists, so this is standard library only: request framing (headers v1 and, for flexible
versions, v2), ApiVersions, and the SCRAM-SHA-512 exchange of RFC 5802 over SaslHandshake/SaslAuthenticate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

from .common import HOST

API_METADATA = 3
API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_CREATE_ACLS = 30
API_SASL_AUTHENTICATE = 36
MECHANISM = "SCRAM-SHA-512"


class Reader:
    """Reads a response body field by field."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def raw(self, n: int) -> bytes:
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def string(self) -> str | None:
        n = self.take(">h")
        return None if n < 0 else self.raw(n).decode("utf-8", "replace")

    def bytes_(self) -> bytes | None:
        n = self.take(">i")
        return None if n < 0 else self.raw(n)

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def compact_string(self) -> str | None:
        n = self.uvarint() - 1
        return None if n < 0 else self.raw(n).decode("utf-8", "replace")

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.raw(self.uvarint())


def string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


@dataclass(frozen=True)
class Credentials:
    """How the stack itself talks to a secure broker: TLS trusting ``cafile``, SCRAM as ``user``."""

    cafile: Path
    user: str
    password: str


class KafkaConnection:
    """One connection to one broker; ``with KafkaConnection(port) as c: c.call(...)``."""

    def __init__(self, port: int, *, timeout: float = 3.0, credentials: Credentials | None = None):
        self.port, self.timeout, self.credentials = port, timeout, credentials
        self.sock: socket.socket | None = None
        self.versions: dict[int, tuple[int, int]] = {}
        self._corr = 0

    def __enter__(self) -> KafkaConnection:
        sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        try:
            sock.settimeout(self.timeout)
            if self.credentials is not None:
                ctx = ssl.create_default_context(cafile=str(self.credentials.cafile))
                sock = ctx.wrap_socket(sock, server_hostname=HOST)
            self.sock = sock
            self._api_versions()
            if self.credentials is not None:
                self._scram(self.credentials.user, self.credentials.password)
        except BaseException:
            sock.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()

    def version(self, api_key: int, wanted: range) -> int:
        """The highest version of ``api_key`` in ``wanted`` that the broker supports."""
        lo, hi = self.versions.get(api_key, (0, -1))
        usable = [v for v in wanted if lo <= v <= hi]
        if not usable:
            speaks = f"v{wanted[0]}-v{wanted[-1]}"
            raise OSError(f"broker supports API {api_key} v{lo}-v{hi}, the stack speaks {speaks}")
        return max(usable)

    def call(self, api_key: int, version: int, body: bytes, *, flexible: bool = False) -> Reader:
        assert self.sock is not None
        self._corr += 1
        client_id = b"detektor-stack"
        # Request header v1 (v2 adds tagged fields): api_key, api_version, correlation_id, client_id.
        header = struct.pack(">hhih", api_key, version, self._corr, len(client_id)) + client_id
        if flexible:
            header += uvarint(0)
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._recv_exact(4))[0]
        if not 0 < size < 64 * 1024 * 1024:
            raise OSError(f"bogus Kafka response size {size}")
        r = Reader(self._recv_exact(size))
        if r.take(">i") != self._corr:  # response header v0: correlation_id (v1 adds tagged fields)
            raise OSError("Kafka correlation id mismatch")
        if flexible:
            r.skip_tags()
        return r

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed by broker")
            buf += chunk
        return bytes(buf)

    def _api_versions(self) -> None:
        r = self.call(API_VERSIONS, 0, b"")
        err = r.take(">h")
        if err != 0:
            raise OSError(f"ApiVersions error code {err}")
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            self.versions[key] = (lo, hi)

    def _scram(self, user: str, password: str) -> None:
        r = self.call(API_SASL_HANDSHAKE, 1, string(MECHANISM))
        err = r.take(">h")
        if err != 0:
            raise OSError(f"the broker does not offer {MECHANISM} (SaslHandshake error {err})")
        version = self.version(API_SASL_AUTHENTICATE, range(0, 2))
        scram = ScramClient(user, password)
        server_first = self._authenticate(version, scram.first())
        server_final = self._authenticate(version, scram.final(server_first))
        scram.verify(server_final)

    def _authenticate(self, version: int, payload: bytes) -> bytes:
        r = self.call(API_SASL_AUTHENTICATE, version, struct.pack(">i", len(payload)) + payload)
        err, message, answer = r.take(">h"), r.string(), r.bytes_()
        if err != 0:
            raise OSError(f"SASL authentication failed ({message or f'error {err}'})")
        return answer or b""


class ScramClient:
    """The client side of SCRAM-SHA-512 (RFC 5802, no channel binding)."""

    def __init__(self, user: str, password: str):
        self.user = user.replace("=", "=3D").replace(",", "=2C")
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(24)).decode()
        self.auth_message = b""
        self.server_key = b""

    def first(self) -> bytes:
        self.first_bare = f"n={self.user},r={self.nonce}"
        return f"n,,{self.first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        fields = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        if not nonce.startswith(self.nonce):
            raise OSError("SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha512", self.password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(hashlib.sha512(client_key).digest(), self.auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_key = _hmac(salted, b"Server Key")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        expected = base64.b64encode(_hmac(self.server_key, self.auth_message)).decode()
        if server_final.decode() != f"v={expected}":
            raise OSError("SCRAM: the server's signature does not match")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha512).digest()
