"""Ports on 127.0.0.1: whether one is taken, by which process, and the error that says so."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from .common import HOST, die
from .proc import proc_cmdline


def port_open(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((HOST, port))
            return True
        except OSError:
            return False


def port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise


def port_owner(port: int) -> str:
    """Best effort 'pid N (cmd)' of the listener on port (Linux /proc), '' when unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return ""
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                        argv = proc_cmdline(int(entry)) or ["?"]
                        cmd = " ".join(" ".join(argv).split())
                        return f"pid {entry} ({cmd[:80]}{'...' if len(cmd) > 80 else ''})"
        except OSError:
            continue
    return ""


def ensure_port_free(port: int, what: str, env_var: str) -> None:
    if port_open(port) or not port_bindable(port):
        owner = port_owner(port)
        die(
            f"port {HOST}:{port} ({what}) is already in use by another process"
            f"{' - ' + owner if owner else ''}, not by this stack; stop it or choose another port, "
            f"e.g. {env_var}={port + 100} python3 compose/local/stack.py up"
        )
