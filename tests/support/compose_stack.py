"""Reading the container stack in compose/: where its files are, and what a
compose service definition says (ports, mounts, command, environment,
dependencies), in whichever of Compose's short or long syntaxes it is written.

The checks built on this are in tests/support/compose_checks.py.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
DATASOURCES_FILE = COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "datasources.yml"
DASHBOARDS_FILE = COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

# What every check returns: one line a problem, none when all is well.
Problems = list[str]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


# ---- reading compose service definitions ------------------------------------


def services_of(compose: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        return {}
    return {name: (svc or {}) for name, svc in compose["services"].items()}


def command_args(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(a) for a in cmd]


def environment_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _port_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def published_ports(svc: dict[str, Any]) -> Iterator[tuple[str | None, int | None, int, str]]:
    """(host_ip, host_port, container_port, protocol) for every `ports` entry."""
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            host_ports = _port_range(str(published)) if published is not None else [None]
            target = int(entry["target"])
            for hp in host_ports:
                yield entry.get("host_ip"), hp, target, entry.get("protocol", "tcp")
            continue
        text = str(entry)
        text, _, proto = text.partition("/")
        proto = proto or "tcp"
        host_ip: str | None = None
        m = re.match(r"^\[([^\]]+)\]:(.*)$", text)  # [::1]:8080:8080
        if m:
            host_ip, text = m.group(1), m.group(2)
        parts = text.split(":")
        if len(parts) == 3:
            host_ip, host, container = parts
        elif len(parts) == 2:
            host, container = parts
        else:
            host, container = "", parts[0]
        containers = _port_range(container)
        hosts: list[int | None] = list(_port_range(host)) if host else [None] * len(containers)
        for hp, cp in zip(hosts, containers, strict=True):
            yield host_ip, hp, cp, proto


def declared_ports(svc: dict[str, Any]) -> set[int]:
    """Container ports named in `ports` and `expose` (documentation for images
    we do not build; for our own services, see tracker_ports)."""
    ports = {cp for _, _, cp, _ in published_ports(svc)}
    for e in svc.get("expose") or []:
        ports.update(_port_range(str(e).partition("/")[0]))
    return ports


def tracker_ports(svc: dict[str, Any]) -> set[int]:
    """Ports a `tracker` container really listens on, from its command and
    environment: `--metrics-port N` (0 disables it), and for `serve` the API
    port (`--port N`, else TRACKER_API_PORT, else the ApiSettings default)."""
    from tracker.config import ApiSettings

    ports: set[int] = set()
    args = command_args(svc)
    for flag in ("--metrics-port", "--port"):
        value = flag_value(args, flag)
        if value is not None and int(value):
            ports.add(int(value))
    if args[:1] == ["serve"] and flag_value(args, "--port") is None:
        env = environment_of(svc)
        ports.add(int(env.get("TRACKER_API_PORT", str(ApiSettings().port))))
    return ports


def listening_ports(svc: dict[str, Any]) -> set[int]:
    """Ports the service's container listens on: derived from the command for
    the services built here, else what `ports` and `expose` declare."""
    return tracker_ports(svc) if svc.get("build") else declared_ports(svc)


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def bind_mounts(svc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host source, container target) of every bind mount; named volumes are skipped."""
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                yield str(vol["source"]), str(vol["target"])
            continue
        source, _, rest = str(vol).partition(":")
        target = rest.split(":")[0]
        if source.startswith((".", "/", "~")):
            yield source, target


def named_volumes(svc: dict[str, Any]) -> Iterator[str]:
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "volume" and vol.get("source"):
                yield str(vol["source"])
            continue
        source, sep, _ = str(vol).partition(":")
        if sep and not source.startswith((".", "/", "~")):
            yield source


def mount_source_for(svc: dict[str, Any], container_path: str) -> str | None:
    """The host source mounted at container_path (itself or a parent folder),
    expressed as a path relative to the compose folder."""
    container_path = posixpath.normpath(container_path)
    best: tuple[int, str] | None = None
    for source, target in bind_mounts(svc):
        target = posixpath.normpath(target)
        if container_path == target or container_path.startswith(target + "/"):
            rel = posixpath.relpath(container_path, target)
            host = posixpath.normpath(posixpath.join(source, rel))
            if best is None or len(target) > best[0]:
                best = (len(target), host)
    return best[1] if best else None


def cli_flag(svc: dict[str, Any], flag: str) -> str | None:
    return flag_value(command_args(svc), flag)


def depends_targets(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {str(d): "service_started" for d in deps}
    return {str(k): (v or {}).get("condition", "service_started") for k, v in deps.items()}


def tracker_services(compose: Any) -> dict[str, dict[str, Any]]:
    """The services built from this repository (all run the `tracker` command)."""
    return {n: s for n, s in services_of(compose).items() if s.get("build")}


def kafka_advertised(svc: dict[str, Any]) -> set[str]:
    """host:port of each advertised listener of a Kafka broker service."""
    advertised = environment_of(svc).get("KAFKA_ADVERTISED_LISTENERS", "")
    return {f"{h}:{p}" for h, p in re.findall(r"://([^:,]+):(\d+)", advertised)}
