"""A throwaway certificate authority, made with openssl, for tests of what a client trusts."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_ca(folder: Path, name: str = "other CA") -> Path:
    """A self-signed CA certificate (its key beside it) in ``folder``; returns the certificate's path."""
    ca, key = folder / "ca.pem", folder / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(ca)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return ca
