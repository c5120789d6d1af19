"""One frozen settings object, read once from ``TRACKER_*`` variables.

Nothing else in the package reads the environment: entry points call
:func:`Settings.from_env` and pass the object down. Every default points at the
local stack that ``make stack-up`` starts, so commands work with no setup.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tracker.errors import ConfigError

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:29092"
DEFAULT_DATABASE_URL = "postgresql://tracker:tracker@127.0.0.1:25432/tracker"
DEFAULT_TRACE_URL_TEMPLATE = "http://localhost:16686/trace/{trace_id}"


class Secret:
    """A string that never shows itself in ``repr``, logs or ``tracker config``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    __str__ = __repr__


def mask_url_password(url: str) -> str:
    """``postgresql://u:pw@h/db`` → ``postgresql://u:****@h/db``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":****"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))


def _env_name(field_name: str) -> str:
    return "TRACKER_" + field_name.upper()


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    database_url: Secret = field(default_factory=lambda: Secret(DEFAULT_DATABASE_URL))
    topic_prefix: str = "detektor.frames"
    group_prefix: str = "tracker"
    trace_url_template: str = DEFAULT_TRACE_URL_TEMPLATE
    topic_partitions: int = 6
    topic_replication_factor: int = 1

    # Kafka security: passed through to aiokafka unchanged.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = field(default_factory=lambda: Secret(""))
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""

    # PostgreSQL TLS: ``disable`` | ``prefer`` | ``require`` | ``verify-ca`` |
    # ``verify-full``; empty means whatever the DSN says.
    database_sslmode: str = ""
    database_pool_size: int = 4
    # The read-only role the query side (CLI queries, HTTP API) connects as;
    # empty means the main DSN. Created by the migrations (see sql/).
    query_database_url: Secret = field(default_factory=lambda: Secret(""))

    # Consumer-group membership. A stable instance id (static membership, e.g.
    # the pod or host name) lets a restarted worker take its partitions back at
    # once instead of waiting for the session timeout; empty = dynamic member.
    instance_id: str = ""
    kafka_session_timeout_ms: int = 10_000

    # How long a worker waits for PostgreSQL at start-up before it gives up
    # (once running, it waits for an outage to end however long it lasts).
    startup_timeout_s: int = 60

    # Worker batching. A batch closes at batch_max_records, or batch_linger_ms
    # after its first record arrived: under a steady trickle that trades a few
    # milliseconds of latency for batches large enough that the per-batch cost
    # (transaction, round trips) stays small. 0 = take whatever is buffered.
    batch_max_records: int = 5000
    batch_timeout_ms: int = 100
    batch_linger_ms: int = 50

    # HTTP API.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_token: Secret = field(default_factory=lambda: Secret(""))

    log_level: str = "INFO"
    log_format: str = "json"

    # ---- derived names -------------------------------------------------
    @property
    def camera_topic(self) -> str:
        return f"{self.topic_prefix}.camera"

    @property
    def processing_topic(self) -> str:
        return f"{self.topic_prefix}.processing"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    @property
    def event_topics(self) -> tuple[str, str]:
        return (self.camera_topic, self.processing_topic)

    @property
    def event_store_group(self) -> str:
        return f"{self.group_prefix}.event-store"

    @property
    def projections_group(self) -> str:
        return f"{self.group_prefix}.projections"

    # ---- construction --------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Parse ``TRACKER_*`` variables; unknown ones are an error (typos bite)."""
        env = os.environ if environ is None else environ
        known = {_env_name(f.name): f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in env.items():
            if not name.startswith("TRACKER_"):
                continue
            f = known.get(name)
            if f is None:
                raise ConfigError(f"unknown setting {name}")
            values[f.name] = _parse(f, name, value)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.kafka_bootstrap.strip():
            raise ConfigError("TRACKER_KAFKA_BOOTSTRAP is empty")
        url = self.database_url.get()
        if not re.match(r"^postgres(ql)?://", url):
            raise ConfigError("TRACKER_DATABASE_URL must be a postgresql:// URL")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.topic_prefix):
            raise ConfigError("TRACKER_TOPIC_PREFIX may hold only letters, digits, '.', '_', '-'")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.group_prefix):
            raise ConfigError("TRACKER_GROUP_PREFIX may hold only letters, digits, '.', '_', '-'")
        if "{trace_id}" not in self.trace_url_template:
            raise ConfigError("TRACKER_TRACE_URL_TEMPLATE must contain {trace_id}")
        if self.topic_partitions < 1:
            raise ConfigError("TRACKER_TOPIC_PARTITIONS must be >= 1")
        if self.batch_max_records < 1:
            raise ConfigError("TRACKER_BATCH_MAX_RECORDS must be >= 1")
        if not 0 <= self.batch_linger_ms <= 10_000:
            raise ConfigError("TRACKER_BATCH_LINGER_MS must be within 0..10000")
        if self.database_sslmode not in (
            "",
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ):
            raise ConfigError(f"TRACKER_DATABASE_SSLMODE: unknown mode {self.database_sslmode!r}")
        if self.log_format not in ("json", "text"):
            raise ConfigError("TRACKER_LOG_FORMAT must be json or text")

    def dump(self) -> list[tuple[str, str]]:
        """``(NAME, value)`` pairs with every secret masked, for ``tracker config``."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                raw = value.get()
                shown = mask_url_password(raw) if "://" in raw else ("****" if raw else "")
            else:
                shown = str(value)
            out.append((_env_name(f.name), shown))
        return out


def _parse(f: dataclasses.Field[Any], name: str, value: str) -> Any:
    factory: Any = f.default_factory
    default = f.default if f.default is not dataclasses.MISSING else factory()
    if isinstance(default, Secret):
        return Secret(value)
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    return value
