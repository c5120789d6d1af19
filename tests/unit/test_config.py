import pytest

from tracker.config import DEFAULT_DATABASE_URL, DEFAULT_KAFKA_BOOTSTRAP, Settings, mask_url_password
from tracker.errors import ConfigError


def test_defaults_point_at_the_local_stack() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap == DEFAULT_KAFKA_BOOTSTRAP
    assert s.database_url.get() == DEFAULT_DATABASE_URL
    assert s.event_topics == ("detektor.frames.camera", "detektor.frames.processing")
    assert s.dlq_topic == "detektor.frames.dlq"
    assert (s.event_store_group, s.projections_group) == ("tracker.event-store", "tracker.projections")


def test_stable_names_are_read() -> None:
    s = Settings.from_env(
        {
            "TRACKER_KAFKA_BOOTSTRAP": "k:9092",
            "TRACKER_DATABASE_URL": "postgresql://u:pw@h/db",
            "TRACKER_TOPIC_PREFIX": "x.frames",
            "TRACKER_GROUP_PREFIX": "g",
            "TRACKER_TRACE_URL_TEMPLATE": "https://t/{trace_id}",
            "TRACKER_TOPIC_PARTITIONS": "12",
            "HOME": "/ignored",
        }
    )
    assert s.kafka_bootstrap == "k:9092" and s.camera_topic == "x.frames.camera"
    assert s.event_store_group == "g.event-store" and s.topic_partitions == 12


def test_secrets_are_masked_everywhere() -> None:
    s = Settings.from_env(
        {
            "TRACKER_DATABASE_URL": "postgresql://u:hunter2@h:5432/db",
            "TRACKER_KAFKA_SASL_PASSWORD": "s3cret",
            "TRACKER_API_TOKEN": "tok-abc",
        }
    )
    dumped = "\n".join(f"{k}={v}" for k, v in s.dump())
    for secret in ("hunter2", "s3cret", "tok-abc"):
        assert secret not in dumped
        assert secret not in repr(s)
    assert "TRACKER_DATABASE_URL=postgresql://u:****@h:5432/db" in dumped
    assert "TRACKER_API_TOKEN=****" in dumped
    assert mask_url_password("postgresql://h/db") == "postgresql://h/db"


@pytest.mark.parametrize(
    "env",
    [
        {"TRACKER_NO_SUCH_THING": "1"},
        {"TRACKER_TOPIC_PARTITIONS": "six"},
        {"TRACKER_TOPIC_PARTITIONS": "0"},
        {"TRACKER_DATABASE_URL": "mysql://x"},
        {"TRACKER_TRACE_URL_TEMPLATE": "http://jaeger/"},
        {"TRACKER_TOPIC_PREFIX": "bad prefix"},
        {"TRACKER_DATABASE_SSLMODE": "sometimes"},
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="TRACKER_"):
        Settings.from_env(env)


def test_default_ports_match_the_local_stack_and_avoid_the_ephemeral_range() -> None:
    """A service port inside Linux's ephemeral range (32768-60999) can be taken
    by a client socket while the service restarts (seen: Kafka failed to bind
    after a restart). The tracker's defaults must be the stack's ports."""
    import re
    from pathlib import Path
    from urllib.parse import urlsplit

    package = Path(__file__).resolve().parents[2] / "compose/local/stackctl"
    stack = "".join(module.read_text() for module in sorted(package.glob("*.py")))
    ports = {name: int(port) for name, port in re.findall(r'\benv_port\("(STACK_\w+)", (\d+)\)', stack)}
    kafka_port = int(DEFAULT_KAFKA_BOOTSTRAP.rsplit(":", 1)[1])
    pg_port = urlsplit(DEFAULT_DATABASE_URL).port
    assert ports["STACK_KAFKA_PORT"] == kafka_port and ports["STACK_PG_PORT"] == pg_port
    assert all(p < 32768 for p in ports.values()), ports
