"""The metric families of tracker.metrics against docs/metrics.md and the
conventions: documented names and types, units declared, one exporter per
series (the unlabelled families join the registry only in their owner, and
tracker serve's status export never sets a worker's family)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tracker import metrics, metrics_registry
from tracker.queries.status import GroupStatus, PartitionStatus, Status, export_status_metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| (?P<type>counter|gauge|histogram) \|", re.MULTILINE)
UNITS = ("seconds", "records")


def families() -> dict[str, tuple[str, str]]:
    """Every family tracker.metrics defines: name -> (type, unit), as exposed."""
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            (fam,) = value.describe()
            out[fam.name] = (fam.type, fam.unit)
    return out


def documented() -> dict[str, str]:
    """Family name -> type, from the tables of docs/metrics.md (counters without ``_total``)."""
    out = {}
    for m in _ROW.finditer(DOCS.read_text(encoding="utf-8")):
        name = m["name"].removesuffix("_total") if m["type"] == "counter" else m["name"]
        out[name] = m["type"]
    return out


def test_every_family_is_documented_with_its_type() -> None:
    defined = {name: kind for name, (kind, _) in families().items()}
    assert defined == documented()


def test_names_and_prefixes() -> None:
    service = {"frames_processed", "frame_errors", "frame_processing_duration_seconds"}
    for name in families():
        assert name.startswith("tracker_") or name in service, name
        assert not name.endswith("_per_second"), f"{name}: a rate is a counter and rate(), not a stored value"
    assert service <= set(families())


def test_a_unit_suffix_is_declared_and_the_names_do_not_change() -> None:
    for name, (_, unit) in families().items():
        suffix = next((u for u in UNITS if name.endswith(f"_{u}")), "")
        assert unit == suffix, f"{name}: unit {unit!r}, expected {suffix!r}"
    body = generate_latest(metrics.REGISTRY).decode()
    assert "# UNIT tracker_batch_duration_seconds seconds" in body
    assert "# UNIT frame_processing_duration_seconds seconds" in body
    assert "# UNIT tracker_consumer_lag_records records" in body
    exposed = {f.name for f in text_string_to_metric_families(body)}
    assert exposed <= set(families())


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    """The registry as in a new process: empty, nothing joined yet."""
    registry = CollectorRegistry(auto_describe=True)
    monkeypatch.setattr(metrics_registry, "REGISTRY", registry)
    monkeypatch.setattr(metrics_registry, "_joined", set())
    return registry


def exposed(registry: CollectorRegistry) -> set[str]:
    return {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_unlabelled_families_join_the_registry_in_their_owner_only(fresh_registry: CollectorRegistry) -> None:
    counter = metrics.OwnedCounter("tracker_test_owned", "test", registry=None)
    gauge = metrics.OwnedGauge("tracker_test_owned_records", "test", unit="records", registry=None)
    assert exposed(fresh_registry) == set()  # what a process that never records exports
    counter.inc(0)
    counter.inc(2)
    assert exposed(fresh_registry) == {"tracker_test_owned"}
    gauge.set(5)
    gauge.set(6)
    assert exposed(fresh_registry) == {"tracker_test_owned", "tracker_test_owned_records"}
    assert fresh_registry.get_sample_value("tracker_test_owned_total") == 2
    assert fresh_registry.get_sample_value("tracker_test_owned_records") == 6


def test_the_unlabelled_families_are_owned() -> None:
    for family in (metrics.events_duplicate, metrics.dlq_size, metrics.replay_running):
        assert isinstance(family, metrics.OwnedCounter | metrics.OwnedGauge), family


def _status(group: str) -> Status:
    now = datetime.now(UTC)
    store = GroupStatus(
        group, [PartitionStatus("t.camera", 0, 100, 40), PartitionStatus("t.camera", 1, 10, None)]
    )
    proj = GroupStatus(
        f"{group} (projection frames)",
        [PartitionStatus("t.camera", 0, 100, 70, now), PartitionStatus("t.camera", 1, 10, None)],
    )
    return Status(store, proj, 1, 3, {"status": "running"})


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_serve_exports_its_own_lag_families_never_the_workers() -> None:
    group = "unit.status-export"
    export_status_metrics(_status(group))
    committed = "tracker_consumer_committed_lag_records"
    assert sample(committed, group=group, topic="t.camera", partition="0") == 60
    assert sample(committed, group=group, topic="t.camera", partition="1") is None  # never committed
    checkpoint = "tracker_projection_checkpoint_lag_records"
    assert sample(checkpoint, projection="frames", topic="t.camera", partition="0") == 30
    assert sample(checkpoint, projection="frames", topic="t.camera", partition="1") == 10
    assert sample("tracker_dlq_size_records") == 3
    assert sample("tracker_replay_running") == 1
    # the workers' families are theirs alone
    for p in ("0", "1"):
        assert sample("tracker_consumer_lag_records", group=group, topic="t.camera", partition=p) is None
    assert not [
        s
        for fam in metrics.REGISTRY.collect()
        if fam.name
        in ("tracker_consumer_lag_records", "tracker_projection_lag_records", "tracker_worker_records")
        for s in fam.samples
        if s.labels.get("topic") == "t.camera" or s.labels.get("group") == group
    ]
