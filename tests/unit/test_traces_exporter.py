"""``OTEL_TRACES_EXPORTER`` in tracker.telemetry.setup_tracing: ``otlp``,
``console``, ``none``, unset (OTLP only with an endpoint) and unknown values."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from tracker import telemetry
from tracker.telemetry import FrameContextSpanProcessor, setup_tracing, traces_exporters

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.invalid:4318"}
TRACES_ENDPOINT = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector.invalid:4318/v1/traces"}


def kinds(environ: dict[str, str]) -> list[type[Any]]:
    return [type(e) for e in traces_exporters(environ)]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # unset: today's rule, OTLP only when an endpoint is set
        ({}, []),
        (ENDPOINT, [OTLPSpanExporter]),
        (TRACES_ENDPOINT, [OTLPSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "", **ENDPOINT}, [OTLPSpanExporter]),
        # named: whatever the endpoint variables say
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [OTLPSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp", **ENDPOINT}, [OTLPSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "console", **ENDPOINT}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console "}, [OTLPSpanExporter, ConsoleSpanExporter]),
    ],
)
def test_the_exporters_the_environment_names(
    environ: dict[str, str], expected: list[type[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tracker.telemetry"):
        assert kinds(environ) == expected
    assert caplog.records == []


@pytest.mark.parametrize("value", ["jaeger", "otlp,zipkin", "stdout"])
def test_an_unknown_exporter_warns_once_and_exports_nothing(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tracker.telemetry"):
        assert kinds({"OTEL_TRACES_EXPORTER": value, **ENDPOINT}) == []
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "OTEL_TRACES_EXPORTER" in message and "not exported" in message
    assert "otlp, console, none" in message


@pytest.fixture
def fresh_tracing(monkeypatch: pytest.MonkeyPatch) -> list[TracerProvider]:
    """setup_tracing as in a new process; the provider it would install globally is
    collected instead (the process's global provider is left alone)."""
    installed: list[TracerProvider] = []
    monkeypatch.setattr(telemetry, "_provider", None)
    monkeypatch.setattr(telemetry.trace, "set_tracer_provider", installed.append)
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return installed


def exporters_of(provider: TracerProvider) -> list[type[Any]]:
    processors = provider._active_span_processor._span_processors
    assert isinstance(processors[0], FrameContextSpanProcessor)
    out = []
    for p in processors[1:]:
        assert isinstance(p, BatchSpanProcessor)
        out.append(type(p.span_exporter))
    return out


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        (ENDPOINT, [OTLPSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [OTLPSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "bogus", **ENDPOINT}, []),
    ],
)
def test_setup_tracing_installs_them(
    environ: dict[str, str],
    expected: list[type[Any]],
    fresh_tracing: list[TracerProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    provider = setup_tracing("tracker-tests")
    try:
        assert fresh_tracing == [provider]
        assert exporters_of(provider) == expected
        # once per process: a second call changes nothing
        assert setup_tracing("other") is provider and fresh_tracing == [provider]
    finally:
        provider.shutdown()
