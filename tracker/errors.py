"""The project's own errors.

Driver errors (asyncpg, aiokafka) are wrapped with ``raise ... from e`` so that
callers depend on these types only, and every error says whether a retry can
help (``retriable``).
"""

from __future__ import annotations


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
