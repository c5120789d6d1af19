"""Tracing, frame context and logging.

``set_frame_context(frame)`` puts the frame and camera ids in a context
variable and in OpenTelemetry baggage; :class:`FrameContextSpanProcessor`
stamps them on every span started under it and :class:`FrameContextFilter`
adds them (and the trace id) to every log record. Tracing always runs on the
SDK so that trace ids exist and propagate; where spans go is the SDK's
standard ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``), and
without it, OTLP only when an ``OTEL_EXPORTER_OTLP_*`` endpoint variable is set
(see :func:`setup_tracing`; those variables belong to the OpenTelemetry SDK).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

FRAME_ID_KEY = "frame.id"
CAMERA_ID_KEY = "camera.id"


@dataclass(frozen=True)
class FrameContext:
    frame_id: str
    camera_id: str


_frame_ctx: ContextVar[FrameContext | None] = ContextVar("tracker_frame_ctx", default=None)


class FrameContextToken:
    """What :func:`reset_frame_context` needs to undo one :func:`set_frame_context`."""

    __slots__ = ("otel_token", "var_token")

    def __init__(self, var_token: Token[FrameContext | None], otel_token: object) -> None:
        self.var_token = var_token
        self.otel_token = otel_token


def _frame_of(frame: Any) -> FrameContext:
    try:
        return FrameContext(str(frame.frame_id), str(frame.camera_id))
    except AttributeError:
        raise TypeError(
            f"a frame context needs an object with frame_id and camera_id, not {type(frame).__name__}"
        ) from None


def _enter(fc: FrameContext) -> FrameContextToken:
    var_token = _frame_ctx.set(fc)
    ctx = baggage.set_baggage(FRAME_ID_KEY, fc.frame_id)
    ctx = baggage.set_baggage(CAMERA_ID_KEY, fc.camera_id, context=ctx)
    return FrameContextToken(var_token, context.attach(ctx))


def set_frame_context(frame: Any) -> FrameContextToken:
    """Make ``frame`` (anything with ``frame_id`` and ``camera_id``) the current frame.

    Every span started from here on in this task (and the tasks it creates)
    carries the frame's ids, as do log lines and the baggage of published
    records. The span that is current when this is called is about this frame
    too, so it is stamped with the ids as well (it may have started before the
    service knew which frame it was handling). Calling it once per frame in a
    loop is correct: each call replaces the previous frame. Inside a
    :func:`traced` function the frame stays current until that function
    returns, then the caller's frame (if any) is current again. Concurrent
    tasks each see their own frame (context variables are per task).

    Returns a token for :func:`reset_frame_context`; :func:`frame_context` is
    the scoped form.
    """
    fc = _frame_of(frame)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(FRAME_ID_KEY, fc.frame_id)
        span.set_attribute(CAMERA_ID_KEY, fc.camera_id)
    return _enter(fc)


def reset_frame_context(token: FrameContextToken) -> None:
    context.detach(token.otel_token)  # type: ignore[arg-type]
    _frame_ctx.reset(token.var_token)


@contextlib.contextmanager
def frame_context(frame: Any) -> Iterator[FrameContext]:
    """``with frame_context(frame):`` — the frame is current inside the block only."""
    fc = _frame_of(frame)
    token = _enter(fc)
    try:
        yield fc
    finally:
        reset_frame_context(token)


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
_log = logging.getLogger(__name__)
TRACES_EXPORTERS = ("otlp", "console", "none")


def _otlp_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def traces_exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters ``environ`` asks for, by the OpenTelemetry SDK's rules.

    ``OTEL_TRACES_EXPORTER`` is a comma-separated list of ``otlp`` (OTLP over
    HTTP, configured by the SDK's ``OTEL_EXPORTER_OTLP_*`` variables),
    ``console`` (each span printed to standard output) and ``none`` (no
    export). Unset or empty: ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, else nothing. A value that
    names anything else logs one warning and exports nothing.
    """
    value = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not value:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        return [_otlp_exporter()] if endpoint else []
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACES_EXPORTERS]
    if unknown:
        _log.warning(
            "OTEL_TRACES_EXPORTER=%r: unknown exporter %s (known: %s); spans are not exported",
            value,
            ", ".join(repr(n) for n in unknown),
            ", ".join(TRACES_EXPORTERS),
        )
        return []
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        exporters.append(_otlp_exporter())
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    return exporters


def setup_tracing(service_name: str) -> TracerProvider:
    """Install the SDK tracer provider once per process (idempotent); spans go
    to the exporters :func:`traces_exporters` reads from the environment."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(FrameContextSpanProcessor())
    for exporter in traces_exporters(os.environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
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


def inject_headers(ctx: context.Context | None = None) -> list[tuple[str, bytes]]:
    """W3C ``traceparent``/``tracestate``/``baggage`` of ``ctx`` (default: current), as Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
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


def inject_carrier() -> dict[str, str]:
    """The current trace context (and frame baggage) as W3C headers, for a
    service that hands a frame to another over its own transport; the receiver
    passes them on as ``Frame.resume(..., trace_context=...)``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


# ---- @traced ---------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def _find_frame(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The frame a traced call is about: the ``frame`` keyword, else the first
    argument that has both ``frame_id`` and ``camera_id``."""
    candidate = kwargs.get("frame")
    if candidate is not None and hasattr(candidate, "frame_id") and hasattr(candidate, "camera_id"):
        return candidate
    for arg in args:
        if hasattr(arg, "frame_id") and hasattr(arg, "camera_id"):
            return arg
    return None


@contextlib.contextmanager
def _traced_scope(
    tracer: trace.Tracer,
    name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    attributes: Mapping[str, Any] | None,
    kind: SpanKind,
) -> Iterator[trace.Span]:
    frame = _find_frame(args, kwargs)
    # Whatever frame the function makes current (set_frame_context inside it)
    # stays current until it returns, then the caller's frame is back.
    restore = _frame_ctx.set(_frame_ctx.get())
    token = _enter(_frame_of(frame)) if frame is not None else None
    parent = None
    carried = getattr(frame, "trace_context", None)
    if carried and not trace.get_current_span().get_span_context().is_valid:
        parent = propagate.extract(dict(carried))  # continue the trace the frame arrived with
    try:
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as e:
                span.record_exception(e)
                span.set_attribute("error.type", type(e).__qualname__)
                span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
                raise
    finally:
        if token is not None:
            reset_frame_context(token)
        _frame_ctx.reset(restore)


@overload
def traced(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def traced(
    *,
    span_name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def traced(
    func: Callable[P, R] | None = None,
    /,
    *,
    span_name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Any:
    """Run the function (sync or ``async``) in a span named ``span_name``
    (default: its qualified name).

    If an argument is a frame (has ``frame_id`` and ``camera_id``), that frame
    is current before the span starts, so the span carries its ids; and a frame
    that arrived with a ``trace_context`` (W3C headers from the service that
    handed it over) continues that trace when no span is current. An exception
    is recorded on the span, sets its status to ERROR and ``error.type``, and
    propagates unchanged.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise TypeError(f"@traced does not wrap generators ({fn.__qualname__})")
        name = span_name or fn.__qualname__
        tracer = trace.get_tracer(fn.__module__)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with _traced_scope(tracer, name, args, kwargs, attributes, kind):
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with _traced_scope(tracer, name, args, kwargs, attributes, kind):
                return fn(*args, **kwargs)

        return wrapper

    return decorate(func) if func is not None else decorate
