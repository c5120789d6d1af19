"""What every module of the stack shares: the state folder, errors, logging, settings, apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent.parent  # <repo>/compose/local
REPO = HERE.parent.parent
STACK = Path(os.environ.get("STACK_DIR", "") or (REPO / ".stack"))
if not STACK.is_absolute():
    STACK = REPO / STACK
STACK = STACK.resolve()

HOST = "127.0.0.1"
IS_ROOT = os.geteuid() == 0


class StackError(Exception):
    """A user-facing failure: printed as one clear message, exit code 1."""


def die(msg: str) -> NoReturn:
    raise StackError(msg)


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace").splitlines()
    except OSError:
        return f"    (no {path.name})"
    return "\n".join("    " + ln for ln in data[-lines:])


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        die(f"{name}={raw!r} is not a port number")
    if not 0 < port < 65536:
        die(f"{name}={raw!r} is out of range")
    return port


_apt_updated = False


def apt_install(*packages: str, why: str) -> None:
    global _apt_updated
    if not IS_ROOT or not shutil.which("apt-get"):
        die(
            f"{why}: install the Debian/Ubuntu package(s) {' '.join(packages)} "
            f"(e.g. sudo apt-get install {' '.join(packages)})"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        log("apt-get update ...")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL)
        _apt_updated = True
    log(f"apt-get install -y {' '.join(packages)} ({why}) ...")
    r = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if r.returncode != 0:
        die(f"apt-get install {' '.join(packages)} failed:\n{r.stdout[-3000:]}")
