"""The project's own errors, and what each means to a caller.

Driver errors (asyncpg, aiokafka) are wrapped with ``raise ... from e`` so that
callers depend on these types only, and every error says whether a retry can
help (``retriable``).

Every error class is defined here, and :data:`OUTCOMES` is the one table from
an error to the exit code of the ``tracker`` command (:func:`exit_code`) and
the status of the HTTP API (:func:`http_status`); ``tracker/cli`` and
``tracker/api/app.py`` both read it.
"""

from __future__ import annotations

# Exit codes of the ``tracker`` command.
EXIT_OK = 0
EXIT_FAILURE = 1  # an operational failure (database or broker unreachable, a failed migration)
EXIT_USAGE = 2  # a bad argument or setting
EXIT_NOT_FOUND = 3  # the thing asked for does not exist (distinct from a failure to look)
EXIT_INTERRUPTED = 130  # Ctrl-C


class TrackerError(Exception):
    """Base of every error raised on purpose by this package."""

    retriable: bool = False


class ConfigError(TrackerError):
    """A setting is missing or malformed."""


class IllegalTransition(TrackerError):
    """A frame was asked to move to a state its lifecycle does not allow."""

    def __init__(self, frame_id: str, current: str, target: str) -> None:
        super().__init__(f"frame {frame_id!r}: illegal transition {current} -> {target}")
        self.frame_id = frame_id
        self.current = current
        self.target = target


class DecodeError(TrackerError):
    """A record could not be turned into a valid event.

    ``stage`` names the step that refused it (``framing``, ``schema``,
    ``body``, ``validation``); it is written to the dead-letter headers.
    """

    stage = "decode"


class FramingError(DecodeError):
    """The bytes are not an Avro single-object encoding (empty, wrong magic, short)."""

    stage = "framing"


class UnknownSchemaError(DecodeError):
    """The writer-schema fingerprint is not one of the versions kept in ``schemas/``."""

    stage = "schema"


class BodyError(DecodeError):
    """The Avro body is truncated, has trailing bytes or breaks the schema."""

    stage = "body"


class ValidationError(DecodeError):
    """The record decodes but its values are not a valid frame event."""

    stage = "validation"


class EncodeError(TrackerError):
    """An event could not be encoded (it breaks the schema)."""


class StorageError(TrackerError):
    """A database operation failed. ``sqlstate`` is PostgreSQL's own code when known."""

    def __init__(self, message: str, *, sqlstate: str | None = None, retriable: bool = False):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.retriable = retriable


class DatabaseUnavailable(StorageError):
    """The database cannot be reached right now; the operation may be retried."""

    def __init__(self, message: str, *, sqlstate: str | None = None):
        super().__init__(message, sqlstate=sqlstate, retriable=True)


class MigrationError(StorageError):
    """A migration failed, or an applied migration was changed after the fact."""


class BrokerError(TrackerError):
    """A Kafka operation failed."""

    def __init__(self, message: str, *, retriable: bool = False):
        super().__init__(message)
        self.retriable = retriable


class NotFound(TrackerError):
    """The thing asked for does not exist (distinct from a failure to look)."""


class PublishError(BrokerError):
    """Events of a frame could not be published; they stay pending on the frame
    (or with the caller, for one event) and the next save publishes them."""

    def __init__(self, message: str, *, frame_id: str, pending: int, retriable: bool = True):
        super().__init__(message, retriable=retriable)
        self.frame_id = frame_id
        self.pending = pending


class InvalidQuery(TrackerError):
    """A query parameter is out of range or malformed (a client error)."""


class UsageError(TrackerError):
    """A bad command-line argument found after parsing."""


class ReplayError(TrackerError):
    """A projection rebuild cannot run as asked."""


class CheckpointConflict(TrackerError):
    """Stored checkpoints differ from what this writer expected; re-seek and retry."""

    retriable = True


class GenerationChanged(TrackerError):
    """A rebuild was swapped in: the live worker must move to the new generation."""

    retriable = True


class Interrupted(Exception):
    """A stop was requested part-way through: a worker's batch during a database
    outage (left uncommitted, redelivered), or a rebuild phase (what is done is
    durable, a rerun resumes). The one way to say so; control flow that never
    reaches the CLI or the API."""


# ---- what an error means to the CLI and the HTTP API ---------------------------------

# The nearest class in an error's MRO decides; anything not here (including
# exceptions that are not TrackerErrors) is an operational failure, 500.
# ConfigError: the person running the command sets the environment (a usage
# error for the CLI); to an HTTP client it is the server's fault.
OUTCOMES: dict[type[BaseException], tuple[int, int]] = {
    TrackerError: (EXIT_FAILURE, 500),
    ConfigError: (EXIT_USAGE, 500),
    UsageError: (EXIT_USAGE, 400),
    InvalidQuery: (EXIT_USAGE, 400),
    NotFound: (EXIT_NOT_FOUND, 404),
    DatabaseUnavailable: (EXIT_FAILURE, 503),
}
_OTHERWISE = (EXIT_FAILURE, 500)


def _outcome(exc: BaseException) -> tuple[int, int]:
    for cls in type(exc).__mro__:
        if cls in OUTCOMES:
            return OUTCOMES[cls]
    return _OTHERWISE


def exit_code(exc: BaseException) -> int:
    """The ``tracker`` command's exit code for ``exc``."""
    return _outcome(exc)[0]


def http_status(exc: BaseException) -> int:
    """The HTTP API's status for ``exc``."""
    return _outcome(exc)[1]
