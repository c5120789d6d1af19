"""Each static check of the container stack notices a deliberate breakage.

The checks of tests/support/compose_checks.py and compose_monitoring.py pass on
the shipped files (test_compose_files.py); here each one is fed broken copies
of the compose file, the Prometheus config, the Grafana provisioning or the
Dockerfile (a latest tag, a port on all interfaces, a wrong Kafka listener, a
scrape target nobody listens on, an unprovisioned datasource, ...) and must
report a problem, so none of them can pass by accident.

The parsed files are fixtures of tests/unit/conftest.py; each test breaks a
deep copy.
"""

from __future__ import annotations

import copy
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
from tests.support.compose_stack import COMPOSE_DIR, Problems  # noqa: E402


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
