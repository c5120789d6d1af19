"""Tracing, frame context and logging.

``set_frame_context(frame)`` puts the frame and camera ids in a context
variable and in OpenTelemetry baggage; :class:`FrameContextSpanProcessor`
stamps them on every span started under it and :class:`FrameContextFilter`
adds them (and the trace id) to every log record. Tracing always runs on the
SDK so that trace ids exist and propagate; spans are exported over OTLP only
when the standard ``OTEL_EXPORTER_OTLP_*`` endpoint variables are set (those
variables belong to the OpenTelemetry SDK, which reads them itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanContext, TraceFlags

FRAME_ID_KEY = "frame.id"
CAMERA_ID_KEY = "camera.id"


@dataclass(frozen=True)
class FrameContext:
    frame_id: str
    camera_id: str


_frame_ctx: ContextVar[FrameContext | None] = ContextVar("tracker_frame_ctx", default=None)


class _Tokens:
    def __init__(self, var_token: Token[FrameContext | None], otel_token: object) -> None:
        self.var_token = var_token
        self.otel_token = otel_token


def set_frame_context(frame: Any) -> _Tokens:
    """Make ``frame`` (anything with ``frame_id`` and ``camera_id``) the current frame.

    Returns a token for :func:`reset_frame_context`; prefer :func:`frame_context`.
    """
    fc = FrameContext(str(frame.frame_id), str(frame.camera_id))
    var_token = _frame_ctx.set(fc)
    ctx = baggage.set_baggage(FRAME_ID_KEY, fc.frame_id)
    ctx = baggage.set_baggage(CAMERA_ID_KEY, fc.camera_id, context=ctx)
    return _Tokens(var_token, context.attach(ctx))


def reset_frame_context(tokens: _Tokens) -> None:
    context.detach(tokens.otel_token)  # type: ignore[arg-type]
    _frame_ctx.reset(tokens.var_token)


@contextlib.contextmanager
def frame_context(frame: Any) -> Iterator[FrameContext]:
    tokens = set_frame_context(frame)
    try:
        fc = _frame_ctx.get()
        assert fc is not None
        yield fc
    finally:
        reset_frame_context(tokens)


def current_frame_context() -> FrameContext | None:
    fc = _frame_ctx.get()
    if fc is not None:
        return fc
    fid = baggage.get_baggage(FRAME_ID_KEY)
    if fid is None:
        return None
    return FrameContext(str(fid), str(baggage.get_baggage(CAMERA_ID_KEY) or ""))


class FrameContextSpanProcessor(SpanProcessor):
    """Stamps ``frame.id`` and ``camera.id`` on every span started in a frame context."""

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        fc = _frame_ctx.get()
        if fc is None:
            fid = baggage.get_baggage(FRAME_ID_KEY, parent_context)
            if fid is None:
                return
            fc = FrameContext(str(fid), str(baggage.get_baggage(CAMERA_ID_KEY, parent_context)))
        span.set_attribute(FRAME_ID_KEY, fc.frame_id)
        span.set_attribute(CAMERA_ID_KEY, fc.camera_id)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_provider: TracerProvider | None = None


def setup_tracing(service_name: str) -> TracerProvider:
    """Install the SDK tracer provider once per process (idempotent)."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(FrameContextSpanProcessor())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def get_tracer(name: str = "tracker") -> trace.Tracer:
    return trace.get_tracer(name)


# ---- W3C trace headers ---------------------------------------------------

Headers = Sequence[tuple[str, bytes]]
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def inject_headers() -> list[tuple[str, bytes]]:
    """``traceparent``/``tracestate``/``baggage`` of the current context, as Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def header(headers: Headers | None, name: str) -> bytes | None:
    for k, v in headers or ():
        if k == name:
            return v
    return None


def parse_traceparent(value: bytes | None) -> tuple[str, str, int] | None:
    """``(trace_id, span_id, flags)`` from a W3C ``traceparent``; ``None`` if malformed.

    A hand-written parser rather than the propagator: this runs once per
    consumed record, and a malformed header must cost nothing but a ``None``.
    """
    if not value or len(value) > 512:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    m = _TRACEPARENT.match(text)
    if not m:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    if version == "00" and len(text) != 55:
        return None
    return trace_id, span_id, int(flags, 16)


def remote_span_context(trace_id: str, span_id: str, flags: int = 1) -> SpanContext:
    return SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(flags & 0x01),
    )


def extract_context(headers: Headers | None) -> context.Context:
    carrier = {}
    for k, v in headers or ():
        if k in ("traceparent", "tracestate", "baggage"):
            with contextlib.suppress(UnicodeDecodeError):
                carrier[k] = v.decode("utf-8")
    return propagate.extract(carrier)


def current_trace_ids() -> tuple[str, str] | None:
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


# ---- logging ---------------------------------------------------------------


class FrameContextFilter(logging.Filter):
    """Adds ``frame_id``, ``camera_id``, ``trace_id`` and ``span_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fc = current_frame_context()
        record.frame_id = fc.frame_id if fc else None
        record.camera_id = fc.camera_id if fc else None
        ids = current_trace_ids()
        record.trace_id, record.span_id = ids if ids else (None, None)
        return True


_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and value is not None and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(FrameContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; keep them, but not at DEBUG floods.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
