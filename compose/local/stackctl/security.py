"""What a secure stack (STACK_SECURE=1) is made of: a throwaway CA, certificates, principals, passwords.

Everything is made once, at the first `up`, into <stack>/tls/ (openssl; the private keys and
passwords.json are readable by the owner only) and deleted by `reset`:

* ca.pem / ca.key: the certificate authority every client trusts (TRACKER_KAFKA_SSL_CAFILE,
  TRACKER_DATABASE_SSLROOTCERT);
* broker.pem: the brokers' key and certificate (CN=broker, SAN 127.0.0.1 and localhost), a Kafka PEM
  keystore; it serves the client listener and authenticates the brokers to the controllers (mutual TLS);
* postgres.crt / postgres.key: PostgreSQL's certificate (CN=127.0.0.1, same SANs);
* passwords.json: one random password per Kafka principal (SCRAM-SHA-512) and per PostgreSQL role.

The principals: `broker` (inter-broker links) and `stack-admin` (this script: readiness, ACLs) are Kafka
super users; the tracker's own principals get only the ACLs of acls.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from .common import HOST, STACK, apt_install, die, rel

SUPER_USERS = ("broker", "stack-admin")
# `stack.py env --tracker ROLE`: the Kafka principal of each role of the tracker.
ROLES = {
    "admin": "tracker-admin",
    "publisher": "tracker-publisher",
    "event-store": "tracker-event-store",
    "projections": "tracker-projections",
}
KAFKA_USERS = (*SUPER_USERS, *ROLES.values())
PG_USERS = ("postgres", "tracker")
DAYS = "825"


class Security:
    def __init__(self) -> None:
        self.home = STACK / "tls"
        self.ca = self.home / "ca.pem"
        self.ca_key = self.home / "ca.key"
        self.broker_keystore = self.home / "broker.pem"
        self.pg_cert = self.home / "postgres.crt"
        self.pg_key = self.home / "postgres.key"
        self.passwords_file = self.home / "passwords.json"

    def ensure(self) -> None:
        """The CA, the certificates and the passwords; made once, kept afterwards."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o755)  # the postgres OS user reads its certificate's copy elsewhere
        if not self.passwords_file.is_file():
            words = {f"kafka:{u}": secrets.token_hex(16) for u in KAFKA_USERS}
            words |= {f"pg:{u}": secrets.token_hex(16) for u in PG_USERS}
            _write_private(self.passwords_file, json.dumps(words, indent=2) + "\n")
        if self.ca.is_file() and self.broker_keystore.is_file() and self.pg_cert.is_file():
            return
        if not shutil.which("openssl"):
            apt_install("openssl", why="a secure stack makes its certificates with openssl")
        self._openssl(
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS, "-keyout", self.ca_key),
            *("-out", self.ca, "-subj", "/CN=detektor-tracker local stack CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        )
        broker_key, broker_crt = self.home / "broker.key", self.home / "broker.crt"
        self._sign("broker", broker_key, broker_crt)
        _write_private(self.broker_keystore, broker_key.read_text() + broker_crt.read_text())
        broker_key.unlink()
        self._sign(HOST, self.pg_key, self.pg_cert)
        for p in (self.ca_key, self.pg_key):
            os.chmod(p, 0o600)

    def _sign(self, cn: str, key: Path, crt: Path) -> None:
        csr, ext = self.home / f"{crt.stem}.csr", self.home / f"{crt.stem}.ext"
        ext.write_text(
            f"subjectAltName=IP:{HOST},DNS:localhost\n"
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"
        )
        self._openssl(
            *("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-days", DAYS),
            *("-set_serial", secrets.randbits(63), "-extfile", ext, "-out", crt),
        )
        csr.unlink()
        ext.unlink()

    def _openssl(self, *args: object) -> None:
        r = subprocess.run(
            ["openssl", *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if r.returncode != 0:
            die(f"openssl {args[0]} failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")

    def password(self, kind: str, user: str) -> str:
        """The password of Kafka principal (kind ``kafka``) or PostgreSQL role (``pg``) ``user``."""
        try:
            return json.loads(self.passwords_file.read_text())[f"{kind}:{user}"]
        except (OSError, ValueError, KeyError):
            die(
                f"{rel(self.passwords_file)} has no password for {kind} user {user!r}; 'reset' makes new ones"
            )

    def wipe(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
