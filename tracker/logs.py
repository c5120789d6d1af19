"""Structured logging: JSON lines that say which frame and which trace they belong to.

Services write ``log.info("Processing frame", frame_id=..., stage="detect")``
with keyword fields (structlog's API). Every line, whether it comes from a
structlog logger or from a library's standard ``logging`` logger, goes through
one chain of processors that adds the level, the logger's name, a UTC
timestamp and, from the current context, ``frame_id``, ``camera_id``,
``trace_id``, ``span_id`` and ``trace_flags``; fields the caller gave win over
the ones found in the context. So a log search for a frame id finds the lines
of that frame whoever wrote them, and each line leads to its trace.

Call :func:`setup_logging` once at start-up; before that, structlog's default
(plain text on stdout) applies and keyword fields still work.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from tracker.telemetry import current_frame_context


def add_frame_and_trace(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the current frame's and span's ids."""
    fc = current_frame_context()
    if fc is not None:
        event_dict.setdefault("frame_id", fc.frame_id)
        event_dict.setdefault("camera_id", fc.camera_id)
    sc = trace.get_current_span().get_span_context()
    if sc.is_valid:
        event_dict.setdefault("trace_id", format(sc.trace_id, "032x"))
        event_dict.setdefault("span_id", format(sc.span_id, "016x"))
        event_dict.setdefault("trace_flags", format(int(sc.trace_flags), "02x"))
    return event_dict


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    add_frame_and_trace,
]


def setup_logging(level: str = "INFO", fmt: str = "json", *, stream: TextIO | None = None) -> None:
    """Send every log line, as JSON (``fmt="json"``) or text, to ``stream`` (stderr).

    Replaces the root logger's handlers: this is for a process's entry point,
    not for a library to call.
    """
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
        final: list[Any] = [structlog.processors.format_exc_info, structlog.processors.EventRenamer("msg")]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final = []
    formatter = structlog.stdlib.ProcessorFormatter(
        # Lines from standard-library loggers (aiokafka, asyncpg, our workers)
        # get the same fields; ``extra={...}`` becomes fields too.
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; keep them, but not at DEBUG floods.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A logger that takes keyword fields: ``get_logger(__name__).info("msg", stage="detect")``."""
    return structlog.stdlib.get_logger(name, **initial)
