"""The container stack in ``compose/``, checked statically on the shipped files.

Docker is not needed (nor, usually, available) where the tests run, so the
compose file, the Prometheus config, the Grafana provisioning and the tracker
image's Dockerfile are checked against each other. The checks are functions
that return a list of problems, in tests/support/compose_checks.py (which says
what each one checks and why; compose_monitoring.py and compose_stack.py
beside it). Here each runs on the shipped files, the tracker's settings accept
each container's environment and the real ``tracker`` argument parser each
container's command. test_compose_breakages.py feeds each check a deliberately
broken copy, so none of them can pass by accident; test_compose_validator.py
runs the real Compose validator where it is installed.

The parsed files are fixtures of tests/unit/conftest.py.
"""

from __future__ import annotations

import argparse
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
    command_args,
    environment_of,
    load_yaml,
    services_of,
    tracker_services,
)


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
        assert settings.kafka.bootstrap == env["TRACKER_KAFKA_BOOTSTRAP"], name


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


def test_yaml_parse_error_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  kafka:\n    image: [unclosed\n")
    with pytest.raises(yaml.YAMLError):
        load_yaml(bad)
