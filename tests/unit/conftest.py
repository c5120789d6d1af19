"""Fixtures shared by unit test modules.

- The container stack's files (compose/), parsed: ``compose``, ``prometheus``,
  ``datasources`` and ``dashboards`` (the Grafana provisioning files), for
  test_compose_files.py and test_compose_breakages.py. Loaded once, read
  only (the breakage tests break deep copies). PyYAML is imported when a
  fixture runs, so that the modules using them can skip without it.
- For the service-side metrics tests (test_service_metrics_api.py,
  test_timing_context.py): ``tracer`` and ``fresh_defaults``. Their helpers
  are in tests/support/metric_samples.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

# ---- the container stack's files ----------------------------------------------


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    from tests.support.compose_stack import COMPOSE_FILE, load_yaml

    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="session")
def prometheus() -> dict[str, Any]:
    from tests.support.compose_stack import PROMETHEUS_FILE, load_yaml

    return load_yaml(PROMETHEUS_FILE)


@pytest.fixture(scope="session")
def datasources() -> dict[str, Any]:
    from tests.support.compose_stack import DATASOURCES_FILE, load_yaml

    return load_yaml(DATASOURCES_FILE)


@pytest.fixture(scope="session")
def dashboards() -> dict[str, Any]:
    from tests.support.compose_stack import DASHBOARDS_FILE, load_yaml

    return load_yaml(DASHBOARDS_FILE)


# ---- service-side metrics -----------------------------------------------------------


@pytest.fixture
def tracer() -> Tracer:
    """A tracer of a local SDK provider (the global one is left alone)."""
    return TracerProvider().get_tracer("test")


@pytest.fixture
def fresh_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No get_metrics call has happened yet in this 'process'."""
    from tracker import service_metrics

    monkeypatch.setattr(service_metrics, "_services", {})
    monkeypatch.setattr(service_metrics, "_default_service", None)
