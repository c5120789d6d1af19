"""What every command prints: one line of JSON with ``--json``, else text; an
error as one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from tracker.errors import EXIT_OK


def emit(
    args: argparse.Namespace,
    data: Any,
    text: str | Callable[[], str],
    *,
    default: Callable[[Any], Any] | None = None,
) -> int:
    """Print ``data`` as JSON if ``--json`` was given, else ``text`` (or what
    ``text()`` returns: work only the text needs is skipped for JSON). A command
    without ``--json`` prints its text. Returns the exit code, 0."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=default))
    else:
        print(text() if callable(text) else text)
    return EXIT_OK


def progress(line: str) -> None:
    """A progress line on stderr, out at once (stdout keeps the result)."""
    print(line, file=sys.stderr, flush=True)


def fail(message: str) -> None:
    """One line on stderr: ``tracker: <message>``."""
    print(f"tracker: {message}", file=sys.stderr)
