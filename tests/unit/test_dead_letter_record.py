"""What a dead letter carries: the original bytes, or an explicit mark where there were none."""

from __future__ import annotations

from types import SimpleNamespace

from tracker.adapters.dead_letters import dead_letter_record
from tracker.errors import FramingError


def _msg(key: bytes | None, value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(
        topic="t.camera", partition=2, offset=41, key=key, value=value, headers=[("traceparent", b"x")]
    )


def test_original_key_value_and_headers_are_kept() -> None:
    key, value, headers = dead_letter_record(_msg(b"frame-1", b"\x00garbage"), FramingError("bad magic"))
    assert (key, value) == (b"frame-1", b"\x00garbage")
    names = [k for k, _ in headers]
    assert "traceparent" in names and "tracker.error.class" in names
    assert "tracker.error.null-value" not in names


def test_a_keyless_tombstone_is_kept_with_a_mark_instead_of_crashing_the_producer() -> None:
    # aiokafka refuses to send a record with neither key nor value (an assert):
    # the consumer must not die on such a record, which Kafka itself accepts.
    key, value, headers = dead_letter_record(_msg(None, None), FramingError("empty record"))
    assert key is None and value == b""
    assert ("tracker.error.null-value", b"1") in headers
    # A tombstone with a key is sent as it is.
    key, value, headers = dead_letter_record(_msg(b"frame-2", None), FramingError("empty record"))
    assert (key, value) == (b"frame-2", None) and ("tracker.error.null-value", b"1") not in headers
