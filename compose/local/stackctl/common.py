"""What every module of the stack shares: the state folder, errors, logging, settings, apt-get."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent.parent  # <repo>/compose/local
REPO = HERE.parent.parent
BASE = Path(os.environ.get("STACK_DIR", "") or (REPO / ".stack"))
if not BASE.is_absolute():
    BASE = REPO / BASE
BASE = BASE.resolve()  # the state folder of the default stack; the Kafka jars of every mode

HOST = "127.0.0.1"
IS_ROOT = os.geteuid() == 0


class StackError(Exception):
    """A user-facing failure: printed as one clear message, exit code 1."""


# -- the mode: how many brokers, whether links are authenticated and encrypted ---------------------
# Each mode is a stack of its own: state in its own folder under BASE and default ports shifted by
# its own offset, so a cluster or a secure stack runs beside the default one without touching it.
MODE_OFFSETS = {"": 0, "cluster": 100, "secure": 200, "secure-cluster": 300}


def _mode() -> tuple[int, bool]:
    raw = os.environ.get("STACK_BROKERS", "").strip() or "1"
    if raw not in ("1", "3"):
        raise StackError(f"STACK_BROKERS={raw!r}: the stack runs 1 broker or a cluster of 3")
    secure = os.environ.get("STACK_SECURE", "").strip().lower()
    if secure not in ("", "0", "1", "no", "yes", "false", "true"):
        raise StackError(f"STACK_SECURE={secure!r}: expected 1 or 0")
    return int(raw), secure in ("1", "yes", "true")


try:
    BROKERS, SECURE = _mode()
    SETTINGS_ERROR = ""
except StackError as _e:  # reported by the command line (cli.main), not as a traceback at import
    BROKERS, SECURE = 1, False
    SETTINGS_ERROR = str(_e)
MODE = "-".join(part for part in ("secure" if SECURE else "", "cluster" if BROKERS > 1 else "") if part)
STACK = BASE / MODE if MODE else BASE  # this mode's state folder
PORT_OFFSET = MODE_OFFSETS[MODE]


def die(msg: str) -> NoReturn:
    raise StackError(msg)


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def _last_lines(path: Path, nbytes: int) -> list[str] | None:
    """The lines of the last ``nbytes`` of a log (None: it cannot be read)."""
    try:
        return path.read_bytes()[-nbytes:].decode("utf-8", "replace").splitlines()
    except OSError:
        return None


def tail(path: Path, lines: int = 40) -> str:
    data = _last_lines(path, 20000)
    if data is None:
        return f"    (no {path.name})"
    return "\n".join("    " + ln for ln in data[-lines:])


def error_lines(path: Path, lines: int = 12) -> str:
    """The last ERROR/FATAL lines of a log (and the exception lines right after them): what a tail of a
    process that shut itself down hides behind its shutdown chatter."""
    data = _last_lines(path, 400000)
    if data is None:
        return f"    (no {path.name})"
    picked: list[str] = []
    follow = 0
    for ln in data:
        if re.search(r"\b(ERROR|FATAL)\b", ln):
            picked.append(ln)
            follow = 3
        elif follow and (ln.startswith(("\t", " ")) or "Exception" in ln or "Error:" in ln):
            picked.append(ln)
            follow -= 1
        else:
            follow = 0
    if not picked:
        return "    (no ERROR or FATAL line)"
    return "\n".join("    " + ln[:400] for ln in picked[-lines:])


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def env_port(name: str, default: int) -> int:
    """The port ``name`` says, else ``default`` (the default stack's) shifted by the mode's offset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default + PORT_OFFSET
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
