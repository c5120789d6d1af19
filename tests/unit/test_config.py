from __future__ import annotations

from typing import Any

import pytest

from tracker.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_KAFKA_BOOTSTRAP,
    ApiSettings,
    BatchSettings,
    ConsumerGroupSettings,
    DatabaseSettings,
    KafkaSettings,
    LogSettings,
    QuerySettings,
    Secret,
    Settings,
    TopicSettings,
    mask_url_password,
)
from tracker.errors import ConfigError

# Every TRACKER_* variable there is, the group field it fills, a value to set
# it to and that value as the field holds it. Operators' environments,
# compose files and scripts use these names: the list changes only on purpose.
VARIABLES: list[tuple[str, str, str, Any]] = [
    ("TRACKER_KAFKA_BOOTSTRAP", "kafka.bootstrap", "k1:9092,k2:9092", "k1:9092,k2:9092"),
    ("TRACKER_KAFKA_SECURITY_PROTOCOL", "kafka.security_protocol", "SASL_SSL", "SASL_SSL"),
    ("TRACKER_KAFKA_SASL_MECHANISM", "kafka.sasl_mechanism", "SCRAM-SHA-512", "SCRAM-SHA-512"),
    ("TRACKER_KAFKA_SASL_USERNAME", "kafka.sasl_username", "svc", "svc"),
    ("TRACKER_KAFKA_SASL_PASSWORD", "kafka.sasl_password", "pw", Secret("pw")),
    ("TRACKER_KAFKA_SSL_CAFILE", "kafka.ssl_cafile", "/ca.pem", "/ca.pem"),
    ("TRACKER_KAFKA_SSL_CERTFILE", "kafka.ssl_certfile", "/cert.pem", "/cert.pem"),
    ("TRACKER_KAFKA_SSL_KEYFILE", "kafka.ssl_keyfile", "/key.pem", "/key.pem"),
    ("TRACKER_KAFKA_SESSION_TIMEOUT_MS", "kafka.session_timeout_ms", "30000", 30_000),
    ("TRACKER_INSTANCE_ID", "kafka.instance_id", "pod-3", "pod-3"),
    ("TRACKER_TOPIC_PREFIX", "topics.prefix", "x.frames", "x.frames"),
    ("TRACKER_TOPIC_PARTITIONS", "topics.partitions", "12", 12),
    ("TRACKER_TOPIC_REPLICATION_FACTOR", "topics.replication_factor", "3", 3),
    ("TRACKER_TOPIC_MIN_INSYNC_REPLICAS", "topics.min_insync_replicas", "1", 1),
    ("TRACKER_GROUP_PREFIX", "groups.prefix", "g", "g"),
    ("TRACKER_DATABASE_URL", "database.url", "postgresql://u:p@h/db", Secret("postgresql://u:p@h/db")),
    ("TRACKER_DATABASE_SSLMODE", "database.sslmode", "verify-full", "verify-full"),
    ("TRACKER_DATABASE_SSLROOTCERT", "database.sslrootcert", "/ca.pem", "/ca.pem"),
    ("TRACKER_DATABASE_POOL_SIZE", "database.pool_size", "9", 9),
    ("TRACKER_STARTUP_TIMEOUT_S", "database.startup_timeout_s", "5", 5),
    (
        "TRACKER_QUERY_DATABASE_URL",
        "queries.database_url",
        "postgresql://r@h/db",
        Secret("postgresql://r@h/db"),
    ),
    (
        "TRACKER_TRACE_URL_TEMPLATE",
        "queries.trace_url_template",
        "https://t/{trace_id}",
        "https://t/{trace_id}",
    ),
    ("TRACKER_BATCH_MAX_RECORDS", "batch.max_records", "100", 100),
    ("TRACKER_BATCH_TIMEOUT_MS", "batch.timeout_ms", "20", 20),
    ("TRACKER_BATCH_LINGER_MS", "batch.linger_ms", "0", 0),
    ("TRACKER_API_HOST", "api.host", "0.0.0.0", "0.0.0.0"),
    ("TRACKER_API_PORT", "api.port", "9000", 9000),
    ("TRACKER_API_TOKEN", "api.token", "tok", Secret("tok")),
    ("TRACKER_ANOMALY_DETECTION", "anomaly.enabled", "off", False),
    ("TRACKER_ANOMALY_WINDOW_S", "anomaly.window_s", "30", 30),
    ("TRACKER_ANOMALY_LATENESS_S", "anomaly.lateness_s", "0", 0),
    ("TRACKER_LOG_LEVEL", "log.level", "DEBUG", "DEBUG"),
    ("TRACKER_LOG_FORMAT", "log.format", "text", "text"),
]


def _get(settings: Settings, path: str) -> Any:
    group, name = path.split(".")
    return getattr(getattr(settings, group), name)


def test_defaults_point_at_the_local_stack() -> None:
    s = Settings.from_env({})
    assert s.kafka.bootstrap == DEFAULT_KAFKA_BOOTSTRAP
    assert s.database.url.get() == DEFAULT_DATABASE_URL
    assert s.topics.events == ("detektor.frames.camera", "detektor.frames.processing")
    assert s.topics.dlq == "detektor.frames.dlq"
    assert (s.groups.event_store, s.groups.projections) == ("tracker.event-store", "tracker.projections")
    assert s == Settings()


def test_the_variable_names_are_unchanged() -> None:
    assert [name for name, _ in Settings().dump()] == [name for name, *_ in VARIABLES]


@pytest.mark.parametrize(("name", "path", "text", "value"), VARIABLES, ids=[v[0] for v in VARIABLES])
def test_each_variable_fills_its_group_field(name: str, path: str, text: str, value: Any) -> None:
    s = Settings.from_env({name: text, "HOME": "/ignored"})
    assert _get(s, path) == value
    # and nothing else: every other field keeps its default
    default = Settings()
    assert [p for _, p, *_ in VARIABLES if _get(s, p) != _get(default, p)] == [path]


def test_derived_names_follow_the_prefixes() -> None:
    s = Settings.from_env({"TRACKER_TOPIC_PREFIX": "x.frames", "TRACKER_GROUP_PREFIX": "g"})
    assert (s.topics.camera, s.topics.processing, s.topics.dlq) == (
        "x.frames.camera",
        "x.frames.processing",
        "x.frames.dlq",
    )
    assert s.topics.events == (s.topics.camera, s.topics.processing)
    assert (s.groups.event_store, s.groups.projections) == ("g.event-store", "g.projections")


@pytest.mark.parametrize(
    ("build", "variable"),
    [
        (lambda: KafkaSettings(bootstrap=" "), "TRACKER_KAFKA_BOOTSTRAP"),
        (lambda: TopicSettings(prefix="bad prefix"), "TRACKER_TOPIC_PREFIX"),
        (lambda: TopicSettings(partitions=0), "TRACKER_TOPIC_PARTITIONS"),
        (lambda: TopicSettings(replication_factor=0), "TRACKER_TOPIC_REPLICATION_FACTOR"),
        (lambda: TopicSettings(min_insync_replicas=2), "TRACKER_TOPIC_MIN_INSYNC_REPLICAS"),
        (lambda: TopicSettings(min_insync_replicas=-1), "TRACKER_TOPIC_MIN_INSYNC_REPLICAS"),
        (lambda: ConsumerGroupSettings(prefix="a/b"), "TRACKER_GROUP_PREFIX"),
        (lambda: DatabaseSettings(url=Secret("mysql://x")), "TRACKER_DATABASE_URL"),
        (lambda: DatabaseSettings(sslmode="sometimes"), "TRACKER_DATABASE_SSLMODE"),
        (lambda: DatabaseSettings(pool_size=0), "TRACKER_DATABASE_POOL_SIZE"),
        (lambda: QuerySettings(trace_url_template="http://jaeger/"), "TRACKER_TRACE_URL_TEMPLATE"),
        (lambda: BatchSettings(max_records=0), "TRACKER_BATCH_MAX_RECORDS"),
        (lambda: BatchSettings(linger_ms=10_001), "TRACKER_BATCH_LINGER_MS"),
        (lambda: LogSettings(format="xml"), "TRACKER_LOG_FORMAT"),
    ],
)
def test_each_group_validates_itself(build: Any, variable: str) -> None:
    """A group is checked when built, on its own, and the error names the variable."""
    with pytest.raises(ConfigError, match=f"^{variable}"):
        build()


def test_groups_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.batch.linger_ms = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.batch = BatchSettings()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TRACKER_TOPIC_PARTITIONS": "six"}, "TRACKER_TOPIC_PARTITIONS"),
        ({"TRACKER_TOPIC_PARTITIONS": "0"}, "TRACKER_TOPIC_PARTITIONS"),
        ({"TRACKER_DATABASE_URL": "mysql://x"}, "TRACKER_DATABASE_URL"),
        ({"TRACKER_TRACE_URL_TEMPLATE": "http://jaeger/"}, "TRACKER_TRACE_URL_TEMPLATE"),
        ({"TRACKER_TOPIC_PREFIX": "bad prefix"}, "TRACKER_TOPIC_PREFIX"),
        ({"TRACKER_DATABASE_SSLMODE": "sometimes"}, "TRACKER_DATABASE_SSLMODE"),
        ({"TRACKER_BATCH_LINGER_MS": "-1"}, "TRACKER_BATCH_LINGER_MS"),
        ({"TRACKER_API_PORT": "80a"}, "TRACKER_API_PORT"),
        ({"TRACKER_LOG_FORMAT": "xml", "TRACKER_API_HOST": "0.0.0.0"}, "TRACKER_LOG_FORMAT"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}"):
        Settings.from_env(env)


@pytest.mark.parametrize("name", ["TRACKER_NO_SUCH_THING", "TRACKER_kafka_bootstrap", "TRACKER_BOOTSTRAP"])
def test_unknown_variables_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown setting {name}"):
        Settings.from_env({name: "1"})


def test_secrets_are_masked_everywhere() -> None:
    s = Settings.from_env(
        {
            "TRACKER_DATABASE_URL": "postgresql://u:hunter2@h:5432/db",
            "TRACKER_QUERY_DATABASE_URL": "postgresql://r:ro-pw@h:5432/db",
            "TRACKER_KAFKA_SASL_PASSWORD": "s3cret",
            "TRACKER_API_TOKEN": "tok-abc",
        }
    )
    dumped = "\n".join(f"{k}={v}" for k, v in s.dump())
    for secret in ("hunter2", "ro-pw", "s3cret", "tok-abc"):
        assert secret not in dumped
        assert secret not in repr(s)
        assert secret not in str(s)
    assert "TRACKER_DATABASE_URL=postgresql://u:****@h:5432/db" in dumped
    assert "TRACKER_QUERY_DATABASE_URL=postgresql://r:****@h:5432/db" in dumped
    assert "TRACKER_KAFKA_SASL_PASSWORD=****" in dumped
    assert "TRACKER_API_TOKEN=****" in dumped
    assert s.kafka.sasl_password.get() == "s3cret"  # still there for who needs it
    assert mask_url_password("postgresql://h/db") == "postgresql://h/db"


def test_dump_shows_every_variable_with_its_value() -> None:
    s = Settings.from_env({"TRACKER_TOPIC_PARTITIONS": "12", "TRACKER_INSTANCE_ID": "pod-3"})
    dumped = dict(s.dump())
    assert dumped["TRACKER_TOPIC_PARTITIONS"] == "12"
    assert dumped["TRACKER_INSTANCE_ID"] == "pod-3"
    assert dumped["TRACKER_API_TOKEN"] == ""  # an empty secret shows as empty
    assert len(dumped) == len(VARIABLES)


def test_to_env_hands_every_setting_to_a_child_process() -> None:
    """What a parent passes to a worker it starts: each variable's text,
    secrets included, read back into the very same settings."""
    s = Settings.from_env({name: text for name, _, text, _ in VARIABLES})
    env = s.to_env()
    assert list(env) == [name for name, *_ in VARIABLES]
    assert env["TRACKER_KAFKA_SASL_PASSWORD"] == "pw" and env["TRACKER_API_TOKEN"] == "tok"
    assert Settings.from_env(env) == s
    assert Settings.from_env(Settings().to_env()) == Settings()


@pytest.mark.parametrize(("name", "path", "text", "value"), VARIABLES, ids=[v[0] for v in VARIABLES])
def test_overrides_take_the_flat_names(name: str, path: str, text: str, value: Any) -> None:
    flat = name.removeprefix("TRACKER_").lower()
    # as text, parsed as the variable would be
    assert _get(Settings.from_env({}, **{flat: text}), path) == value
    assert _get(Settings().with_overrides(**{flat: text}), path) == value
    # or as the value itself
    assert _get(Settings().with_overrides(**{flat: value}), path) == value


def test_overrides_win_over_the_environment_and_leave_the_original_alone() -> None:
    env = {"TRACKER_TOPIC_PREFIX": "from.env", "TRACKER_BATCH_LINGER_MS": "10"}
    s = Settings.from_env(env, topic_prefix="from.override")
    assert s.topics.prefix == "from.override" and s.batch.linger_ms == 10
    t = s.with_overrides(batch_linger_ms=200, batch_max_records=1000, instance_id="i1")
    assert (t.batch.linger_ms, t.batch.max_records, t.kafka.instance_id) == (200, 1000, "i1")
    assert (s.batch.linger_ms, s.batch.max_records, s.kafka.instance_id) == (10, 5000, "")
    assert t.database is s.database and t.topics is s.topics  # untouched groups are shared


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_linger_ms": 20_000}, "^TRACKER_BATCH_LINGER_MS must be within"),
        ({"topic_partitions": 0}, "^TRACKER_TOPIC_PARTITIONS must be >= 1"),
        ({"database_url": "mysql://x"}, "^TRACKER_DATABASE_URL must be a postgresql"),
        ({"topic_partitions": "six"}, "^TRACKER_TOPIC_PARTITIONS: expected an integer"),
        ({"topic_partitions": 6.0}, "^TRACKER_TOPIC_PARTITIONS: expected int"),
        ({"topic_partitions": True}, "^TRACKER_TOPIC_PARTITIONS: expected int"),
        ({"api_token": 123}, "^TRACKER_API_TOKEN: expected Secret"),
        ({"kafka_bootstrapp": "k:9092"}, "unknown setting 'kafka_bootstrapp'"),
        ({"bootstrap": "k:9092"}, "unknown setting 'bootstrap'"),
    ],
)
def test_overrides_are_validated_as_the_environment_is(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({}, **overrides)
    with pytest.raises(ConfigError, match=message):
        Settings().with_overrides(**overrides)


def test_groups_can_be_built_and_composed_directly() -> None:
    s = Settings(kafka=KafkaSettings(instance_id="w1"), api=ApiSettings(port=0))
    assert s.kafka.instance_id == "w1" and s.api.port == 0
    assert s == Settings.from_env({}, instance_id="w1", api_port=0)


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


def test_an_event_goes_to_the_topic_of_its_source() -> None:
    from tracker import events as ev

    topics = Settings.from_env({}, topic_prefix="p").topics
    assert topics.of(ev.FrameCaptured.source) == topics.camera == "p.camera"
    assert topics.of(ev.FrameQueued.source) == topics.camera
    assert topics.of(ev.StageCompleted.source) == topics.processing == "p.processing"


def test_topics_are_created_with_the_min_isr_when_set() -> None:
    from tracker.adapters.kafka import new_topic

    plain = new_topic(TopicSettings(replication_factor=3), "t")
    assert (plain.num_partitions, plain.replication_factor, plain.topic_configs) == (6, 3, {})
    strict = new_topic(TopicSettings(replication_factor=3, min_insync_replicas=2), "t", partitions=12)
    assert (strict.num_partitions, strict.topic_configs) == (12, {"min.insync.replicas": "2"})
