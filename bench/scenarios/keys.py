"""The Key table: every figure a run reports (its unit, the scenario that owns
it, its target), which of them may be null with a note, and the ratios derived
from figures of several scenarios."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    name: str
    unit: str
    scenario: str
    target: str = ""  # e.g. ">= 30000"
    note: str = ""


KEYS: tuple[Key, ...] = (
    Key("limit_consume_eps", "events/s", "limits", note="aiokafka reading the pre-loaded topics, discarding"),
    Key("limit_decode_eps", "events/s", "limits", note="FrameEventCodec.decode_record on the same records"),
    Key("limit_copy_rows_s", "rows/s", "limits", note="COPY of the same rows into frame_events"),
    Key("naive_eps", "events/s", "baseline", note="decode + INSERT per record, aiokafka auto-commit"),
    Key("naive_commit_each_eps", "events/s", "baseline", note="the same, offset committed after each record"),
    Key("peer_quix_eps", "events/s", "peers", note="Quix Streams + its PostgreSQL sink, defaults"),
    Key("peer_connect_eps", "events/s", "peers", note="Kafka Connect + Debezium JDBC sink"),
    Key("store_eps", "events/s", "ingest", note="tracker consume alone"),
    Key("project_eps", "events/s", "ingest", note="tracker project alone"),
    Key("two_groups_eps", "events/s", "ingest", note="tracker consume + tracker project, two groups"),
    Key(
        "pipeline_eps", "events/s", "ingest", ">= 30000", "stored and projected: consume --inline-projection"
    ),
    Key("pipeline_2w_eps", "events/s", "ingest", note="the same, two workers in the group (one per core)"),
    Key("ratio_vs_naive", "x", "ingest", ">= 10", "pipeline_eps / naive_eps"),
    Key("ratio_vs_limit", "x", "ingest", ">= 0.5", "pipeline_eps / min(limits)"),
    Key("store_vs_quix", "x", "ingest", ">= 3", "store_eps / peer_quix_eps"),
    Key("store_vs_connect", "x", "ingest", ">= 3", "store_eps / peer_connect_eps"),
    Key("pipeline_vs_quix", "x", "ingest", note="pipeline_eps / peer_quix_eps (the peer only stores)"),
    Key("pipeline_vs_connect", "x", "ingest", note="pipeline_eps / peer_connect_eps (the peer only stores)"),
    Key("store_cpu_us_per_event", "us", "ingest", note="CPU of tracker consume per event (alone)"),
    Key("project_cpu_us_per_event", "us", "ingest", note="CPU of tracker project per event (alone)"),
    Key("pipeline_cpu_us_consume", "us", "ingest", note="pipeline: the one worker's CPU per event"),
    Key("pipeline_cpu_us_postgres", "us", "ingest", note="pipeline: PostgreSQL's CPU per event"),
    Key("pipeline_cpu_us_broker", "us", "ingest", note="pipeline: the broker's CPU per event"),
    Key("pipeline_2w_cpu_us_consume", "us", "ingest", note="pipeline_2w: both workers' CPU per event"),
    Key("pipeline_2w_cpu_us_postgres", "us", "ingest", note="pipeline_2w: PostgreSQL's CPU per event"),
    Key("pipeline_2w_cpu_us_broker", "us", "ingest", note="pipeline_2w: the broker's CPU per event"),
    Key("two_groups_cpu_us_consume", "us", "ingest", note="two groups: the event-store consumer"),
    Key("two_groups_cpu_us_project", "us", "ingest", note="two groups: the projection worker"),
    Key("two_groups_cpu_us_postgres", "us", "ingest", note="two groups: PostgreSQL"),
    Key("two_groups_cpu_us_broker", "us", "ingest", note="two groups: the broker"),
    Key("fresh_p50_ms", "ms", "freshness", note="publish -> row in frame_metadata"),
    Key("fresh_p99_ms", "ms", "freshness", "<= 500"),
    Key("fresh_max_ms", "ms", "freshness"),
    Key("fresh_offered_eps", "events/s", "freshness", note="load actually offered"),
    Key("replay_topics_eps", "events/s", "replay", ">= 30000"),
    Key("replay_store_eps", "events/s", "replay", ">= 40000"),
    Key("journey_p50_ms", "ms", "queries"),
    Key("journey_p99_ms", "ms", "queries", "<= 20"),
    Key("slow_p99_ms", "ms", "queries", "<= 100", "1-hour window"),
    Key("failures_p99_ms", "ms", "queries", "<= 100", "24-hour window"),
    Key("stats_p99_ms", "ms", "queries", note="camera + stage stats, 24 hours"),
    Key("query_events", "events", "queries", note="events stored when queried"),
    Key("ui_frame_p99_ms", "ms", "ui", "<= 50", "server time of a frame's page"),
    Key("ui_search_p99_ms", "ms", "ui", "<= 100", "server time of a prefix search page"),
    Key("worker_rss_mb_max", "MB", "memory", "<= 300", "max RSS of either worker"),
    Key("worker_rss_growth_mb", "MB", "memory", note="max RSS at the large backlog minus at the small one"),
    Key("sdk_frames_per_s", "frames/s", "sdk", note="FrameRepository.save, 3 saves per frame, one process"),
    Key("sdk_events_per_s", "events/s", "sdk", note="sdk_frames_per_s x 10 events per frame"),
    Key("sdk_overhead_us_per_frame", "us", "sdk", note="instrumentation CPU per frame, no span export"),
    Key("sdk_overhead_batch_us_per_frame", "us", "sdk", note="the same, batch span processor, null exporter"),
    Key("sdk_bare_us_per_frame", "us", "sdk", note="CPU per frame of the domain calls alone (no publishing)"),
    Key("soak_minutes", "min", "soak", ">= 20", "how long the steady load ran"),
    Key("soak_eps", "events/s", "soak", note="the steady load offered (and stored)"),
    Key("soak_lag_max", "records", "soak", note="the group's largest lag sampled, warm-up left out"),
    Key("soak_lag_p99", "records", "soak", note="p99 of the lag samples"),
    Key("soak_fresh_p99_ms", "ms", "soak", "<= 500", "freshness p99 over the whole soak"),
    Key("soak_fresh_p99_worst_ms", "ms", "soak", note="the worst interval's freshness p99"),
    Key("soak_rss_mb_max", "MB", "soak", "<= 300", "largest worker RSS sampled"),
    Key("soak_rss_growth_mb", "MB", "soak", "<= 20", "flat: last tenth's median minus first tenth's"),
    Key("soak_lost_events", "events", "soak", "<= 0", "sent minus stored"),
    Key("soak_log_errors", "lines", "soak", "<= 0", "error lines in the workers' logs"),
    Key("soak_cpu_us_per_event", "us", "soak", note="the workers' CPU per event at the steady rate"),
    Key("scale_eps_1", "events/s", "scale", note="consume --inline-projection, 1 worker, 12 partitions"),
    Key("scale_eps_2", "events/s", "scale", note="the same, 2 workers"),
    Key("scale_eps_4", "events/s", "scale", note="the same, 4 workers"),
    Key("scale_store_eps_1", "events/s", "scale", note="tracker consume alone, 1 worker"),
    Key("scale_store_eps_2", "events/s", "scale", note="tracker consume alone, 2 workers"),
    Key("scale_store_eps_4", "events/s", "scale", note="tracker consume alone, 4 workers"),
    Key("scale_cpu_us_1", "us", "scale", note="pipeline, 1 worker: workers' CPU per event"),
    Key("scale_cpu_us_2", "us", "scale", note="pipeline, 2 workers: workers' CPU per event (summed)"),
    Key("scale_cpu_us_4", "us", "scale", note="pipeline, 4 workers: workers' CPU per event (summed)"),
    Key("scale_pg_cpu_us_1", "us", "scale", note="pipeline, 1 worker: PostgreSQL's CPU per event"),
    Key("scale_pg_cpu_us_2", "us", "scale", note="pipeline, 2 workers: PostgreSQL's CPU per event"),
    Key("scale_pg_cpu_us_4", "us", "scale", note="pipeline, 4 workers: PostgreSQL's CPU per event"),
    Key("scale_partitions", "per topic", "scale", note="partitions of the scale scenario's topics"),
    Key("anomaly_precision", "", "anomaly", ">= 0.9", "episodes matching an injection / all episodes"),
    Key("anomaly_recall", "", "anomaly", ">= 0.9", "injections meant to alarm that an episode matched"),
    Key("anomaly_delay_p50_s", "s", "anomaly", "<= 60", "event time: injection start -> first known"),
    Key("anomaly_false_alarms_per_hour", "1/h", "anomaly", "<= 1", "episodes on clean traffic"),
    Key("anomaly_static_precision", "", "anomaly", note="static thresholds, same windows"),
    Key("anomaly_static_recall", "", "anomaly", note="static thresholds, same windows"),
    Key("anomaly_static_delay_p50_s", "s", "anomaly", note="static thresholds, same windows"),
    Key("anomaly_static_false_alarms_per_hour", "1/h", "anomaly", note="static thresholds, clean windows"),
    Key("anomaly_river_precision", "", "anomaly", note="river GaussianScorer, same windows"),
    Key("anomaly_river_recall", "", "anomaly", note="river GaussianScorer, same windows"),
    Key("anomaly_river_delay_p50_s", "s", "anomaly", note="river GaussianScorer, same windows"),
    Key("anomaly_river_false_alarms_per_hour", "1/h", "anomaly", note="river GaussianScorer, clean windows"),
    Key("anomaly_cpu_us_per_event", "us", "anomaly", note="worker + PostgreSQL CPU per event, on minus off"),
    Key("anomaly_pipeline_eps_on", "events/s", "anomaly", note="consume --inline-projection, detection on"),
    Key("anomaly_pipeline_eps_off", "events/s", "anomaly", note="the same traffic, detection off"),
    Key("anomaly_pipeline_ratio", "x", "anomaly", ">= 0.9", "eps on / eps off"),
    Key("kafka_version", "", "environment"),
    Key("postgres_version", "", "environment"),
    Key("partitions", "per topic", "environment"),
    Key("batch_max_records", "records", "environment"),
    Key("batch_timeout_ms", "ms", "environment"),
    Key("batch_linger_ms", "ms", "environment"),
    Key("cpu_count", "", "environment"),
    Key("git_commit", "", "environment"),
)
DERIVED = (
    "ratio_vs_naive",
    "ratio_vs_limit",
    "store_vs_quix",
    "store_vs_connect",
    "pipeline_vs_quix",
    "pipeline_vs_connect",
)
# Keys that may be null, provided a "<key>_note" says why: the peers (which may
# not be installed) and the ratios derived from figures of other scenarios.
NULLABLE = (
    "peer_connect_eps",
    "peer_quix_eps",
    *DERIVED,
    # The anomaly scenario's comparisons: a figure of nothing found (no episode:
    # no precision, no delay) or river not installed.
    *(
        f"anomaly{a}_{k}"
        for a in ("", "_static", "_river")
        for k in ("precision", "recall", "delay_p50_s", "false_alarms_per_hour")
    ),
    "anomaly_pipeline_ratio",
)


def derive(f: dict[str, Any], details: dict[str, Any]) -> dict[str, str]:
    """The ratios, from figures that may come from different scenarios.

    Returns a note for each ratio left null, naming the figure it lacks.
    """
    pipe = f.get("pipeline_eps")
    for k in DERIVED:
        f[k] = None
    if pipe and f.get("naive_eps"):
        f["ratio_vs_naive"] = round(pipe / f["naive_eps"], 2)
    lims = ("limit_consume_eps", "limit_decode_eps", "limit_copy_rows_s")
    if pipe and all(f.get(k) for k in lims):
        binding = min(lims, key=lambda k: f[k])
        f["ratio_vs_limit"] = round(pipe / f[binding], 3)
        details.setdefault("ingest", {})["binding_limit"] = binding
    for mine, peer in (
        ("store", "quix"),
        ("store", "connect"),
        ("pipeline", "quix"),
        ("pipeline", "connect"),
    ):
        if f.get(f"{mine}_eps") and f.get(f"peer_{peer}_eps"):
            f[f"{mine}_vs_{peer}"] = round(f[f"{mine}_eps"] / f[f"peer_{peer}_eps"], 2)
    inputs = {
        "ratio_vs_naive": ("pipeline_eps", "naive_eps"),
        "ratio_vs_limit": ("pipeline_eps", *lims),
        "store_vs_quix": ("store_eps", "peer_quix_eps"),
        "store_vs_connect": ("store_eps", "peer_connect_eps"),
        "pipeline_vs_quix": ("pipeline_eps", "peer_quix_eps"),
        "pipeline_vs_connect": ("pipeline_eps", "peer_connect_eps"),
    }
    return {
        k: "not computed: " + ", ".join(i for i in inputs[k] if not f.get(i)) + " not measured"
        for k in DERIVED
        if f[k] is None
    }


def check_target(value: Any, target: str) -> bool | None:
    if not target or value is None:
        return None
    op, num = target.split()
    return value >= float(num) if op == ">=" else value <= float(num)
