"""The integration tests' own Prometheus helpers, checked on their own.

- ``grafana_to_promql()`` (tests/integration/shipped_promql.py) renders Grafana's
  variables in a dashboard expression as Grafana does for Prometheus.
- ``find_prometheus()`` (tests/integration/prom.py), where prometheus is missing
  and cannot be installed, says what to do.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.prom import PrometheusUnavailable, find_prometheus
from tests.integration.shipped_promql import grafana_to_promql

pytestmark = pytest.mark.integration


def test_grafana_variables_in_promql() -> None:
    expr = 'sum(rate(x{camera_id=~"$camera", a=~"${camera:regex}"}[$__rate_interval])) and y[$__interval]'
    out = grafana_to_promql(expr, {"camera": ["cam-001", "cam.2"]}, interval="1h")
    assert out == 'sum(rate(x{camera_id=~"(cam-001|cam\\\\.2)", a=~"(cam-001|cam\\.2)"}[1m])) and y[1h]'
    assert grafana_to_promql('{a=~"$v"}', {"v": ["one"]}) == '{a=~"one"}'
    with pytest.raises(KeyError):
        grafana_to_promql('x{a=~"$nope"}', {})


def test_prometheus_install_message_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where prometheus is missing and we cannot install it, the error says what to do."""
    import tests.integration.prom as prom_mod

    monkeypatch.setattr(prom_mod, "_locate", lambda name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrometheusUnavailable, match="apt-get install -y prometheus"):
        find_prometheus()
