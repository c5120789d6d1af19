"""The Quix Streams peer, configured by TRACKER_*: the same records, the same
rows, an identically shaped table (``frame_events`` of its own migrated
database), through Quix's own PostgreSQL sink with the Application's default
settings (at-least-once, commit every 5 s).

    python -m bench.peer_quix --limit 300000

Two adjustments, both needed for correct rows and neither a speed-up:
our codec as the value deserializer (Quix has no single-object-encoding Avro
deserializer), and a fixed column list in the sink (Quix's sink takes the
columns of a batch from its *first* row and leaves out null values, which would
drop e.g. ``stage`` whenever a batch starts with a FrameCaptured).
``on_conflict_do_nothing=True`` makes its inserts idempotent on the primary
key like ours. Prints one JSON line: records, seconds from the first record
to the end of the final checkpoint (the sink writes at checkpoints).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.store.postgres import COLUMNS, record_to_row
from tracker.telemetry import parse_traceparent


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peer_quix")
    ap.add_argument("--limit", type=int, required=True, help="stop after this many records")
    a = ap.parse_args()
    settings = Settings.from_env()

    from psycopg2 import sql
    from psycopg2.extras import execute_values
    from quixstreams import Application, message_context
    from quixstreams.models.serializers import Deserializer
    from quixstreams.sinks.community.postgresql import PostgreSQLSink

    codec = FrameEventCodec()
    first: list[float] = []

    class FrameEventDeserializer(Deserializer):
        def __call__(self, value: bytes, ctx: Any) -> Any:
            if not first:
                first.append(time.perf_counter())
            d = codec.decode_record(value)
            tp = None
            for k, v in ctx.headers or ():
                if k == "traceparent":
                    tp = parse_traceparent(v)
                    break
            return {"rec": d.record, "fp": d.fingerprint, "tp": tp}

    def to_row(value: dict[str, Any]) -> dict[str, Any]:
        mc = message_context()
        tp = value["tp"]
        row = record_to_row(
            value["rec"],
            topic=mc.topic,
            partition=mc.partition,
            offset=mc.offset,
            fingerprint=value["fp"],
            trace_id=tp[0] if tp else None,
            span_id=tp[1] if tp else None,
        )
        return dict(zip(COLUMNS, row, strict=True))

    class FixedColumnsSink(PostgreSQLSink):
        def _insert_rows(self, table_name: str, rows: list[dict], pks: Any = None) -> None:
            if not rows:
                return
            query = sql.SQL("INSERT INTO {table} ({columns}) VALUES %s ON CONFLICT DO NOTHING").format(
                table=sql.Identifier(self._schema_name, table_name),
                columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
            )
            values = [[row.get(c) for c in COLUMNS] for row in rows]
            assert self._client is not None
            with self._client.cursor() as cursor:
                execute_values(cursor, query, values)

    db = urlsplit(settings.database.url.get())
    sink = FixedColumnsSink(
        host=db.hostname or "127.0.0.1",
        port=db.port or 5432,
        dbname=db.path.lstrip("/"),
        user=db.username or "",
        password=db.password or "",
        table_name="frame_events",
        schema_auto_update=False,
        include_metadata=False,
        on_conflict_do_nothing=True,
    )
    app = Application(
        broker_address=settings.kafka.bootstrap,
        consumer_group=settings.groups.event_store,
        auto_offset_reset="earliest",
        loglevel="WARNING",
        auto_create_topics=False,
    )
    deser = FrameEventDeserializer()
    for topic in settings.topics.events:
        sdf = app.dataframe(app.topic(topic, value_deserializer=deser, key_deserializer="bytes"))
        sdf = sdf.apply(to_row)
        sdf.sink(sink)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app.run(count=a.limit, timeout=60.0)
    end = time.perf_counter()
    print(
        json.dumps({"records": a.limit, "seconds": end - (first[0] if first else end)}),
        flush=True,
    )


if __name__ == "__main__":
    main()
