"""The ``tracker`` command.

Argument errors print one line and exit 2; operational errors (database or
broker unreachable, a failed migration) print one line and exit 1; a thing
asked for that does not exist exits 3 (``tracker.errors`` holds the table, the
HTTP API's statuses come from it too). Nothing prints a traceback unless
``TRACKER_LOG_LEVEL=DEBUG``.

``parser`` builds the arguments; the commands are grouped by family
(``workers``, ``queries``, ``admin``) and print through ``output``. Start-up
stays light: Kafka, PostgreSQL and HTTP clients are imported inside the command
that needs them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from tracker.cli import admin, queries, workers
from tracker.cli.output import fail
from tracker.cli.parser import build_parser
from tracker.config import DatabaseSettings, Settings, mask_url_password
from tracker.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    ConfigError,
    DatabaseUnavailable,
    TrackerError,
    exit_code,
)

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "config": admin.cmd_config,
    "migrate": admin.cmd_migrate,
    "topics": admin.cmd_topics,
    "simulate": workers.cmd_simulate,
    "consume": workers.cmd_consume,
    "dlq": admin.cmd_dlq,
    "project": workers.cmd_project,
    "replay": workers.cmd_replay,
    "journey": queries.cmd_journey,
    "slow": queries.cmd_slow,
    "failures": queries.cmd_failures,
    "anomalies": queries.cmd_anomalies,
    "stats": queries.cmd_stats,
    "status": queries.cmd_status,
    "retention": admin.cmd_retention,
    "serve": admin.cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        fail(f"configuration error: {e}")
        return exit_code(e)
    from tracker.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)
    debug = settings.log.level.upper() == "DEBUG"
    try:
        return asyncio.run(COMMANDS[args.command](settings, args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug and not isinstance(e, TrackerError):
            raise  # the last resort: a traceback only with DEBUG, else one line
        fail(_message(e, settings.database))
        code = exit_code(e)  # tracker.errors: the HTTP API's statuses come from the same table
        if debug and code == EXIT_FAILURE:
            raise
        return code


def _message(e: Exception, database: DatabaseSettings) -> str:
    """The one line printed for an error (after ``tracker: ``)."""
    if exit_code(e) == EXIT_NOT_FOUND:
        return str(e)
    if isinstance(e, DatabaseUnavailable):
        where = mask_url_password(database.url.get())
        return f"error: cannot reach PostgreSQL at {where} ({e}); is the stack up? (make stack-up)"
    if isinstance(e, TrackerError):
        return f"error: {e}"
    return f"error: unexpected {type(e).__name__}: {e} (TRACKER_LOG_LEVEL=DEBUG shows the traceback)"
