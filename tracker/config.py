"""Settings in groups that validate themselves, read once from ``TRACKER_*`` variables.

Nothing else in the package reads the environment: entry points call
:func:`Settings.from_env` and pass the object down, and a function that needs
only one group's fields takes that group (``settings.kafka`` to build a Kafka
client, ``settings.database`` to open a pool). Every default points at the
local stack that ``make stack-up`` starts, so commands work with no setup.

Each field names its variable explicitly (``_env``); the same name without
``TRACKER_``, lower-case, is the field's *flat name*, which
:meth:`Settings.from_env` and :meth:`Settings.with_overrides` take as keyword
overrides (``topic_prefix=``, ``batch_linger_ms=``, ``instance_id=``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from tracker.errors import ConfigError

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:29092"
DEFAULT_DATABASE_URL = "postgresql://tracker:tracker@127.0.0.1:25432/tracker"
DEFAULT_TRACE_URL_TEMPLATE = "http://localhost:16686/trace/{trace_id}"

_PREFIX = "TRACKER_"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SSLMODES = ("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full")


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


def _env(name: str) -> dict[str, str]:
    """A field's metadata: the variable it is read from (its type is that of its default)."""
    return {"env": name}


class _Group:
    """What every group does: check itself once built (so an invalid group never exists)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the variable of the first bad field."""


@dataclass(frozen=True)
class KafkaSettings(_Group):
    """Connecting to the brokers (security passed to aiokafka unchanged) and
    this process's consumer-group membership."""

    bootstrap: str = field(default=DEFAULT_KAFKA_BOOTSTRAP, metadata=_env("TRACKER_KAFKA_BOOTSTRAP"))
    security_protocol: str = field(default="PLAINTEXT", metadata=_env("TRACKER_KAFKA_SECURITY_PROTOCOL"))
    sasl_mechanism: str = field(default="", metadata=_env("TRACKER_KAFKA_SASL_MECHANISM"))
    sasl_username: str = field(default="", metadata=_env("TRACKER_KAFKA_SASL_USERNAME"))
    sasl_password: Secret = field(default=Secret(""), metadata=_env("TRACKER_KAFKA_SASL_PASSWORD"))
    ssl_cafile: str = field(default="", metadata=_env("TRACKER_KAFKA_SSL_CAFILE"))
    ssl_certfile: str = field(default="", metadata=_env("TRACKER_KAFKA_SSL_CERTFILE"))
    ssl_keyfile: str = field(default="", metadata=_env("TRACKER_KAFKA_SSL_KEYFILE"))
    session_timeout_ms: int = field(default=10_000, metadata=_env("TRACKER_KAFKA_SESSION_TIMEOUT_MS"))
    # A stable instance id (static membership, e.g. the pod or host name) lets
    # a restarted worker take its partitions back at once instead of waiting
    # for the session timeout; empty = dynamic member. Also names the clients.
    instance_id: str = field(default="", metadata=_env("TRACKER_INSTANCE_ID"))

    def validate(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("TRACKER_KAFKA_BOOTSTRAP is empty")


@dataclass(frozen=True)
class TopicSettings(_Group):
    """The topics' names (all derived from the prefix) and how the tracker creates them."""

    prefix: str = field(default="detektor.frames", metadata=_env("TRACKER_TOPIC_PREFIX"))
    partitions: int = field(default=6, metadata=_env("TRACKER_TOPIC_PARTITIONS"))
    replication_factor: int = field(default=1, metadata=_env("TRACKER_TOPIC_REPLICATION_FACTOR"))
    # min.insync.replicas of the topics the tracker creates: with acks=all, the
    # copies a write needs before it is acknowledged (2 on a three-broker
    # cluster). 0 = the broker's default, which is 1 unless the cluster says otherwise.
    min_insync_replicas: int = field(default=0, metadata=_env("TRACKER_TOPIC_MIN_INSYNC_REPLICAS"))

    @property
    def camera(self) -> str:
        return f"{self.prefix}.camera"

    @property
    def processing(self) -> str:
        return f"{self.prefix}.processing"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    def of(self, source: str) -> str:
        """The topic of an event's ``source`` (``FrameEvent.source``: camera or processing)."""
        return self.camera if source == "camera" else self.processing

    @property
    def events(self) -> tuple[str, str]:
        """The two event topics: camera, processing."""
        return (self.camera, self.processing)

    def validate(self) -> None:
        if not _NAME.fullmatch(self.prefix):
            raise ConfigError("TRACKER_TOPIC_PREFIX may hold only letters, digits, '.', '_', '-'")
        if self.partitions < 1:
            raise ConfigError("TRACKER_TOPIC_PARTITIONS must be >= 1")
        if self.replication_factor < 1:
            raise ConfigError("TRACKER_TOPIC_REPLICATION_FACTOR must be >= 1")
        if not 0 <= self.min_insync_replicas <= self.replication_factor:
            raise ConfigError(
                "TRACKER_TOPIC_MIN_INSYNC_REPLICAS must be between 0 (the broker's default) and "
                f"TRACKER_TOPIC_REPLICATION_FACTOR ({self.replication_factor}), "
                f"not {self.min_insync_replicas}"
            )


@dataclass(frozen=True)
class ConsumerGroupSettings(_Group):
    """The consumer groups' names, derived from the prefix."""

    prefix: str = field(default="tracker", metadata=_env("TRACKER_GROUP_PREFIX"))

    @property
    def event_store(self) -> str:
        return f"{self.prefix}.event-store"

    @property
    def projections(self) -> str:
        return f"{self.prefix}.projections"

    def validate(self) -> None:
        if not _NAME.fullmatch(self.prefix):
            raise ConfigError("TRACKER_GROUP_PREFIX may hold only letters, digits, '.', '_', '-'")


@dataclass(frozen=True)
class DatabaseSettings(_Group):
    """PostgreSQL: where, over which TLS, how many connections a process holds."""

    url: Secret = field(default=Secret(DEFAULT_DATABASE_URL), metadata=_env("TRACKER_DATABASE_URL"))
    # ``disable`` | ``allow`` | ``prefer`` | ``require`` | ``verify-ca`` |
    # ``verify-full``; empty means whatever the DSN says.
    sslmode: str = field(default="", metadata=_env("TRACKER_DATABASE_SSLMODE"))
    # The CA file that verify-ca and verify-full check the server's certificate
    # against (libpq's sslrootcert; the other modes verify nothing, so they do
    # not read it); empty means the system's trust store.
    sslrootcert: str = field(default="", metadata=_env("TRACKER_DATABASE_SSLROOTCERT"))
    # The most connections one process's pool opens (workers, queries, API).
    pool_size: int = field(default=4, metadata=_env("TRACKER_DATABASE_POOL_SIZE"))
    # How long a worker waits for PostgreSQL at start-up before it gives up
    # (once running, it waits for an outage to end however long it lasts).
    startup_timeout_s: int = field(default=60, metadata=_env("TRACKER_STARTUP_TIMEOUT_S"))

    def validate(self) -> None:
        if not re.match(r"^postgres(ql)?://", self.url.get()):
            raise ConfigError("TRACKER_DATABASE_URL must be a postgresql:// URL")
        if self.sslmode not in _SSLMODES:
            raise ConfigError(f"TRACKER_DATABASE_SSLMODE: unknown mode {self.sslmode!r}")
        if self.pool_size < 1:
            raise ConfigError("TRACKER_DATABASE_POOL_SIZE must be >= 1")


@dataclass(frozen=True)
class QuerySettings(_Group):
    """The read side (CLI queries, HTTP API): the role it connects as, and
    where a trace id links to."""

    # The read-only role's DSN (created by the migrations, see sql/); empty
    # means the main TRACKER_DATABASE_URL.
    database_url: Secret = field(default=Secret(""), metadata=_env("TRACKER_QUERY_DATABASE_URL"))
    trace_url_template: str = field(
        default=DEFAULT_TRACE_URL_TEMPLATE, metadata=_env("TRACKER_TRACE_URL_TEMPLATE")
    )

    def validate(self) -> None:
        if "{trace_id}" not in self.trace_url_template:
            raise ConfigError("TRACKER_TRACE_URL_TEMPLATE must contain {trace_id}")


@dataclass(frozen=True)
class BatchSettings(_Group):
    """Worker batching. A batch closes at ``max_records``, or ``linger_ms``
    after its first record arrived: under a steady trickle that trades a few
    milliseconds of latency for batches large enough that the per-batch cost
    (transaction, round trips) stays small. 0 = take whatever is buffered."""

    max_records: int = field(default=5000, metadata=_env("TRACKER_BATCH_MAX_RECORDS"))
    timeout_ms: int = field(default=100, metadata=_env("TRACKER_BATCH_TIMEOUT_MS"))
    linger_ms: int = field(default=50, metadata=_env("TRACKER_BATCH_LINGER_MS"))

    def validate(self) -> None:
        if self.max_records < 1:
            raise ConfigError("TRACKER_BATCH_MAX_RECORDS must be >= 1")
        if not 0 <= self.linger_ms <= 10_000:
            raise ConfigError("TRACKER_BATCH_LINGER_MS must be within 0..10000")


@dataclass(frozen=True)
class ApiSettings(_Group):
    """The HTTP API (``tracker serve``); workers bind ``/metrics`` to the same host."""

    host: str = field(default="127.0.0.1", metadata=_env("TRACKER_API_HOST"))
    port: int = field(default=8080, metadata=_env("TRACKER_API_PORT"))
    token: Secret = field(default=Secret(""), metadata=_env("TRACKER_API_TOKEN"))


@dataclass(frozen=True)
class AnomalySettings(_Group):
    """Learned anomaly detection, kept by the projection writer (projections/anomalies.py):
    windows of ``window_s`` seconds of capture time, closed ``lateness_s`` after
    every partition has passed their end. A generation keeps the window and
    lateness it started with; these apply to a new one."""

    enabled: bool = field(default=True, metadata=_env("TRACKER_ANOMALY_DETECTION"))
    window_s: int = field(default=10, metadata=_env("TRACKER_ANOMALY_WINDOW_S"))
    lateness_s: int = field(default=10, metadata=_env("TRACKER_ANOMALY_LATENESS_S"))

    def validate(self) -> None:
        if not 1 <= self.window_s <= 3600:
            raise ConfigError("TRACKER_ANOMALY_WINDOW_S must be within 1..3600")
        if not 0 <= self.lateness_s <= 3600:
            raise ConfigError("TRACKER_ANOMALY_LATENESS_S must be within 0..3600")


@dataclass(frozen=True)
class LogSettings(_Group):
    level: str = field(default="INFO", metadata=_env("TRACKER_LOG_LEVEL"))
    format: str = field(default="json", metadata=_env("TRACKER_LOG_FORMAT"))

    def validate(self) -> None:
        if self.format not in ("json", "text"):
            raise ConfigError("TRACKER_LOG_FORMAT must be json or text")


@dataclass(frozen=True)
class Settings:
    """Every group; ``settings.kafka.bootstrap``, ``settings.topics.camera``,
    ``settings.database.url``, ``settings.batch.linger_ms``, …"""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    groups: ConsumerGroupSettings = field(default_factory=ConsumerGroupSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    queries: QuerySettings = field(default_factory=QuerySettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    log: LogSettings = field(default_factory=LogSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Parse ``TRACKER_*`` variables (unknown ones are an error: typos bite),
        then apply ``overrides`` by flat name (``topic_prefix=...``)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, value in env.items():
            if not name.startswith(_PREFIX):
                continue
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {name}")
            values[_flat(name)] = _parse(_FIELDS[name][1], name, value)
        return cls().with_overrides(**{**values, **overrides})

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with fields replaced by flat name (``batch_linger_ms=200``),
        checked as the environment is (a string is parsed as its variable would be)."""
        changes: dict[str, dict[str, Any]] = {}
        for flat, value in overrides.items():
            if flat not in _FLAT:
                raise ConfigError(f"unknown setting {flat!r} (there is no {_PREFIX}{flat.upper()})")
            group, f = _FLAT[flat]
            changes.setdefault(group, {})[f.name] = _coerce(f, value)
        return dataclasses.replace(
            self,
            **{group: dataclasses.replace(getattr(self, group), **kw) for group, kw in changes.items()},
        )

    def validate(self) -> None:
        """Each group checks itself when built; this checks them all again."""
        for g in dataclasses.fields(self):
            getattr(self, g.name).validate()

    def to_env(self) -> dict[str, str]:
        """Every setting as the text of its ``TRACKER_*`` variable, secrets
        revealed: how a process hands its settings to a child process (never
        to a log; :meth:`dump` is for showing them)."""
        out = {}
        for name, (group, f) in _FIELDS.items():
            value = getattr(getattr(self, group), f.name)
            if isinstance(value, Secret):
                out[name] = value.get()
            elif isinstance(value, bool):
                out[name] = "1" if value else "0"
            else:
                out[name] = str(value)
        return out

    def dump(self) -> list[tuple[str, str]]:
        """``(NAME, value)`` pairs with every secret masked, for ``tracker config``."""
        out = []
        for name, (group, f) in _FIELDS.items():
            value = getattr(getattr(self, group), f.name)
            if isinstance(value, Secret):
                raw = value.get()
                shown = mask_url_password(raw) if "://" in raw else ("****" if raw else "")
            else:
                shown = str(value)
            out.append((name, shown))
        return out


def _fields() -> dict[str, tuple[str, dataclasses.Field[Any]]]:
    """``TRACKER_NAME -> (group attribute, field)`` for every setting."""
    out: dict[str, tuple[str, dataclasses.Field[Any]]] = {}
    for g in dataclasses.fields(Settings):
        for f in dataclasses.fields(cast(type, g.default_factory)):
            out[f.metadata["env"]] = (g.name, f)
    return out


def _flat(name: str) -> str:
    """``TRACKER_BATCH_LINGER_MS`` → ``batch_linger_ms``, the name overrides use."""
    return name.removeprefix(_PREFIX).lower()


_FIELDS = _fields()
_FLAT = {_flat(name): where for name, where in _FIELDS.items()}


def _parse(f: dataclasses.Field[Any], name: str, value: str) -> Any:
    """The variable ``name``'s text as the type of the field's default."""
    default = f.default
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


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    """An override's value: text is parsed as the variable's would be; any
    other value must already have the field's type."""
    name = f.metadata["env"]
    if isinstance(value, str):
        return _parse(f, name, value)
    kind = type(f.default)
    if type(value) is not kind:  # bool is not accepted for int, nor int for bool
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value
