"""Avro single-object encoding of frame events, with every schema version kept.

Wire format (Avro specification, "Single-object encoding"):
``C3 01`` + 8-byte CRC-64-AVRO fingerprint of the writer schema (little-endian,
which is the byte order fastavro's hex fingerprint already has) + binary body.

Decoding looks the writer schema up by fingerprint among every
``schemas/frame_event.v*.avsc`` (package data ``tracker.schemas``) and
resolves it into the newest one, so records written by any released version
stay readable. Every way a record can be bad ends in a
:class:`~tracker.errors.DecodeError` subclass, never in another exception: the
event-store consumer dead-letters exactly those.
"""

from __future__ import annotations

import io
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from tracker.domain import STAGE_EVENT_TYPES, EventType
from tracker.errors import (
    BodyError,
    EncodeError,
    FramingError,
    UnknownSchemaError,
    ValidationError,
)
from tracker.events import (
    EVENT_TYPES,
    FrameEvent,
    from_record,
    to_micros,
)

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
CONTENT_TYPE = "application/vnd.apache.avro+binary; format=single-object"
# The repository's schemas/ folder, shipped as the package tracker.schemas
# (pyproject.toml): the same code reads it from a checkout and from a wheel.
SCHEMA_DIR: Traversable = resources.files("tracker.schemas")
_VERSION_RE = re.compile(r"^frame_event\.v(\d+)\.avsc$")

# Validation bounds: generous for real cameras, tight enough that a corrupt or
# hostile record cannot bloat the store or a partition range.
MAX_FRAME_ID = 256
MAX_CAMERA_ID = 128
MAX_NAME = 256
MAX_MESSAGE = 16_384
MAX_ATTRIBUTES = 64
MAX_ATTR_VALUE = 2_048
MIN_TS_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
MAX_TS_US = 4_102_444_800_000_000  # 2100-01-01T00:00:00Z
MAX_DURATION_MS = 86_400_000.0  # one day
MAX_ATTEMPT = 1_000


@dataclass(frozen=True)
class SchemaVersion:
    version: int
    fingerprint: bytes
    schema: dict[str, Any]  # parsed by fastavro
    path: Traversable


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(dict(schema)), "CRC-64-AVRO"))


def load_schema_versions(directory: Traversable = SCHEMA_DIR) -> list[SchemaVersion]:
    """Every ``frame_event.vN.avsc`` in ``directory`` (a Path works too), oldest first."""
    versions = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        m = _VERSION_RE.match(path.name)
        if not m or not path.is_file():
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        versions.append(
            SchemaVersion(
                version=int(m.group(1)),
                fingerprint=schema_fingerprint(raw),
                # Keep fastavro's "parsed" marker: without it schemaless_reader and
                # schemaless_writer parse the schema again on every call, which is
                # about half of the cost of decoding one of our small records.
                schema=parse_schema(raw),  # type: ignore[arg-type]
                path=path,
            )
        )
    if not versions:
        raise FileNotFoundError(f"no frame_event.v*.avsc schema in {directory}")
    versions.sort(key=lambda v: v.version)
    return versions


@dataclass(frozen=True)
class Decoded:
    record: dict[str, Any]
    fingerprint: bytes
    schema_version: int


class FrameEventCodec:
    """Encodes with the newest schema; decodes any kept version into the newest."""

    def __init__(self, schema_dir: Traversable = SCHEMA_DIR) -> None:
        versions = load_schema_versions(schema_dir)
        self._by_fp = {v.fingerprint: v for v in versions}
        self.current = versions[-1]
        self._prefix = MAGIC + self.current.fingerprint

    @property
    def versions(self) -> list[SchemaVersion]:
        return sorted(self._by_fp.values(), key=lambda v: v.version)

    # ---- encoding --------------------------------------------------------
    def encode_record(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._prefix)
        try:
            schemaless_writer(buf, self.current.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise EncodeError(f"event does not fit schema v{self.current.version}: {e}") from e
        return buf.getvalue()

    def encode(self, event: FrameEvent) -> bytes:
        return self.encode_record(event.to_record())

    # ---- decoding --------------------------------------------------------
    def decode_record(self, data: bytes | None, *, validate: bool = True) -> Decoded:
        if not data:
            raise FramingError("empty record value")
        if len(data) < HEADER_LEN:
            raise FramingError(f"record of {len(data)} bytes is shorter than the 10-byte header")
        if data[:2] != MAGIC:
            raise FramingError(f"wrong magic {data[:2].hex()} (expected c301)")
        fp = bytes(data[2:10])
        writer = self._by_fp.get(fp)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}")
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        reader_schema = None if writer is self.current else self.current.schema
        try:
            record = schemaless_reader(buf, writer.schema, reader_schema)
        except Exception as e:  # fastavro raises many types on corrupt input
            raise BodyError(f"corrupt Avro body: {type(e).__name__}: {e}") from e
        if buf.tell() != len(data):
            raise BodyError(f"{len(data) - buf.tell()} trailing bytes after the Avro body")
        if not isinstance(record, dict):
            raise BodyError("Avro body is not a record")
        if validate:
            validate_record(record)
        return Decoded(record, fp, writer.version)

    def decode(self, data: bytes) -> FrameEvent:
        return from_record(self.decode_record(data).record)


def _check_text(rec: Mapping[str, Any], name: str, limit: int, *, required: bool = True) -> None:
    value = rec.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is missing")
        return
    if not isinstance(value, str):
        raise ValidationError(f"{name} is not a string")
    if required and not value.strip():
        raise ValidationError(f"{name} is empty")
    if len(value) > limit:
        raise ValidationError(f"{name} is {len(value)} characters long (limit {limit})")
    # PostgreSQL text cannot hold NUL; refusing it here keeps a database error
    # from ever being a per-record failure.
    if "\x00" in value:
        raise ValidationError(f"{name} contains a NUL character")


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The canonical form str(uuid.UUID(...)) gives: most event ids already have it.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_id_chars(rec: Mapping[str, Any], name: str) -> None:
    if _CONTROL_CHARS.search(rec[name]):
        raise ValidationError(f"{name} contains control characters")


def validate_record(rec: dict[str, Any]) -> None:
    """Reject what decodes but is not a valid frame event. Normalises event_id."""
    event_type = rec.get("event_type")
    if event_type not in EVENT_TYPES:
        raise ValidationError(f"unknown event_type {str(event_type)[:64]!r}")
    event_id = rec.get("event_id")
    if not (isinstance(event_id, str) and _CANONICAL_UUID.fullmatch(event_id)):
        try:
            rec["event_id"] = str(uuid.UUID(str(event_id)))
        except ValueError:
            raise ValidationError(f"event_id {str(event_id)[:64]!r} is not a UUID") from None
    _check_text(rec, "frame_id", MAX_FRAME_ID)
    _check_id_chars(rec, "frame_id")
    _check_text(rec, "camera_id", MAX_CAMERA_ID)
    _check_id_chars(rec, "camera_id")
    _check_text(rec, "producer", MAX_NAME, required=False)
    for name in ("frame_timestamp", "occurred_at"):
        ts = rec.get(name)
        if not isinstance(ts, int) or not MIN_TS_US <= ts < MAX_TS_US:
            raise ValidationError(f"{name} {ts!r} is outside 2000-01-01 .. 2100-01-01")
    stage_required = event_type in STAGE_EVENT_TYPES
    _check_text(rec, "stage", MAX_NAME, required=stage_required)
    attempt = rec.get("attempt", 1)
    if not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
        raise ValidationError(f"attempt {attempt!r} is outside 1..{MAX_ATTEMPT}")
    duration = rec.get("duration_ms")
    if duration is None:
        if event_type in (EventType.STAGE_COMPLETED, EventType.STAGE_FAILED):
            raise ValidationError(f"{event_type} without duration_ms")
    elif not (math.isfinite(duration) and 0.0 <= duration <= MAX_DURATION_MS):
        raise ValidationError(f"duration_ms {duration!r} is outside 0 .. {MAX_DURATION_MS}")
    failed = event_type in (EventType.STAGE_FAILED, EventType.FAILED)
    _check_text(rec, "error_type", MAX_NAME, required=failed)
    _check_text(rec, "error_message", MAX_MESSAGE, required=False)
    attrs = rec.get("attributes") or {}
    if len(attrs) > MAX_ATTRIBUTES:
        raise ValidationError(f"{len(attrs)} attributes (limit {MAX_ATTRIBUTES})")
    for k, v in attrs.items():
        if len(k) > MAX_NAME or len(v) > MAX_ATTR_VALUE or "\x00" in k or "\x00" in v:
            raise ValidationError(f"attribute {k[:32]!r} is too long or contains NUL")


__all__ = [
    "CONTENT_TYPE",
    "MAGIC",
    "Decoded",
    "FrameEventCodec",
    "SchemaVersion",
    "load_schema_versions",
    "schema_fingerprint",
    "to_micros",
    "validate_record",
]
