import io
import json
import shutil
import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path

import avro.io
import avro.schema
import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker import events as ev
from tracker.codec import MAGIC, SCHEMA_DIR, FrameEventCodec, schema_fingerprint
from tracker.errors import (
    BodyError,
    DecodeError,
    FramingError,
    UnknownSchemaError,
    ValidationError,
)

TS = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
codec = FrameEventCodec()


def common(**kw):
    base = dict(frame_id="cam-1-f1", camera_id="cam-1", frame_timestamp=TS, occurred_at=TS, producer="test")
    base.update(kw)
    return base


ALL_EVENTS = [
    ev.FrameCaptured(**common(attributes={"width": "1920"})),
    ev.FrameQueued(**common()),
    ev.ProcessingStarted(**common()),
    ev.StageStarted(**common(), stage="detect", attempt=2),
    ev.StageCompleted(**common(), stage="detect", duration_ms=41.5),
    ev.StageFailed(**common(), stage="analyze", duration_ms=3.0, error_type="E", error_message="m"),
    ev.ProcessingCompleted(**common(), duration_ms=130.25),
    ev.ProcessingFailed(**common(), error_type="E", error_message="boom", stage="analyze"),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.event_type)
def test_round_trip_every_event_type(event: ev.FrameEvent) -> None:
    data = codec.encode(event)
    assert data[:2] == MAGIC
    assert data[2:10] == codec.current.fingerprint
    assert codec.decode(data) == event


def test_fingerprint_is_little_endian_crc64_as_the_avro_library_computes() -> None:
    text = (SCHEMA_DIR / "frame_event.v1.avsc").read_text()
    assert avro.schema.parse(text).fingerprint("CRC-64-AVRO") == codec.current.fingerprint
    assert schema_fingerprint(json.loads(text)) == codec.current.fingerprint


def test_reads_a_record_written_by_the_avro_package() -> None:
    """Another conforming library, given only the schema file, interoperates."""
    schema = avro.schema.parse((SCHEMA_DIR / "frame_event.v1.avsc").read_text())
    rec = ALL_EVENTS[4].to_record()
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(rec, avro.io.BinaryEncoder(buf))
    data = MAGIC + schema.fingerprint("CRC-64-AVRO") + buf.getvalue()
    assert codec.decode(data) == ALL_EVENTS[4]
    # ... and the other way round: the avro package reads what we wrote.
    ours = codec.encode(ALL_EVENTS[5])
    back = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(ours[10:])))
    assert back["error_message"] == "m"


def test_schema_evolution_reads_old_records_into_the_new_schema(tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "frame_event.v1.avsc", tmp_path)
    v2 = json.loads((SCHEMA_DIR / "frame_event.v1.avsc").read_text())
    v2["fields"].append({"name": "gpu", "type": ["null", "string"], "default": None})
    (tmp_path / "frame_event.v2.avsc").write_text(json.dumps(v2))
    old_bytes = codec.encode(ALL_EVENTS[3])  # written with v1
    new_codec = FrameEventCodec(tmp_path)
    assert new_codec.current.version == 2
    decoded = new_codec.decode_record(old_bytes)
    assert decoded.schema_version == 1 and decoded.record["gpu"] is None
    assert decoded.record["stage"] == "detect"
    new_bytes = new_codec.encode_record({**ALL_EVENTS[3].to_record(), "gpu": "a100"})
    assert new_codec.decode_record(new_bytes).record["gpu"] == "a100"
    # The old codec does not know v2: a clear, specific error.
    with pytest.raises(UnknownSchemaError):
        codec.decode(new_bytes)


def _raw(rec_overrides: dict) -> bytes:
    rec = {**ALL_EVENTS[4].to_record(), **rec_overrides}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(json.loads((SCHEMA_DIR / "frame_event.v1.avsc").read_text())), rec)
    return MAGIC + codec.current.fingerprint + buf.getvalue()


GOOD = codec.encode(ALL_EVENTS[4])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", FramingError),
        (b"\xc3\x01\x00", FramingError),
        (b"\x00\x01" + GOOD[2:], FramingError),
        (MAGIC + b"\x00" * 8 + GOOD[10:], UnknownSchemaError),
        (GOOD[:-5], BodyError),
        (GOOD + b"\x00", BodyError),
        (GOOD[:10] + b"\xff" * 40, BodyError),
        (_raw({"event_type": "FrameTeleported"}), ValidationError),
        (_raw({"event_id": "not-a-uuid"}), ValidationError),
        (_raw({"frame_id": ""}), ValidationError),
        (_raw({"frame_id": "x" * 300_000}), ValidationError),
        (_raw({"frame_id": "a\nb"}), ValidationError),
        (_raw({"camera_id": "  "}), ValidationError),
        (_raw({"frame_timestamp": -5}), ValidationError),
        (_raw({"occurred_at": 2**62}), ValidationError),
        (_raw({"stage": None}), ValidationError),
        (_raw({"duration_ms": None}), ValidationError),
        (_raw({"duration_ms": float("nan")}), ValidationError),
        (_raw({"duration_ms": -1.0}), ValidationError),
        (_raw({"attempt": 0}), ValidationError),
        (_raw({"error_message": "nul\x00byte"}), ValidationError),
        (_raw({"attributes": {str(i): "v" for i in range(100)}}), ValidationError),
    ],
)
def test_bad_records_raise_specific_decode_errors(data: bytes, error: type) -> None:
    with pytest.raises(error):
        codec.decode_record(data)


def test_non_utf8_string_is_a_body_error() -> None:
    good = codec.encode(ev.FrameQueued(**common(frame_id="AAAA")))
    bad = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc", 1)
    with pytest.raises(BodyError):
        codec.decode_record(bad)


def test_event_ids_are_normalised() -> None:
    upper = str(uuid.uuid4()).upper()
    assert codec.decode_record(_raw({"event_id": upper})).record["event_id"] == upper.lower()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_raise_decode_errors(data: bytes) -> None:
    try:
        codec.decode_record(data)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, len(GOOD) - 1))
def test_fuzz_mutated_valid_records_only_raise_decode_errors(noise: bytes, cut: int) -> None:
    for data in (
        GOOD[:cut] + noise,
        MAGIC + codec.current.fingerprint + noise,
        GOOD[:10] + struct.pack("<q", len(noise)) + noise,
    ):
        try:
            codec.decode_record(data)
        except DecodeError:
            pass
