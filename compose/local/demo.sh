#!/usr/bin/env bash
# `make demo`: a few simulated cameras for a short while, through the real
# Kafka into the real PostgreSQL. Run from the repository root by the Makefile.
set -euo pipefail
T=.venv/bin/tracker

echo "== migrations"
$T migrate
echo "== simulating 4 cameras at 10 fps for 6 s (seeded, 5% failures)"
$T simulate --cameras 4 --fps 10 --duration 6 --failure-rate 0.05
echo "== event-store consumer (until caught up)"
$T consume --until-idle --metrics-port 0
echo "== dead letters"
$T dlq list --limit 5
echo
echo "Stored events by type:"
.venv/bin/python - <<'PY'
import asyncio
from tracker.config import Settings
from tracker.db import connect

async def main() -> None:
    conn = await connect(Settings.from_env())
    try:
        rows = await conn.fetch(
            "SELECT event_type, count(*) AS n FROM frame_events GROUP BY 1 ORDER BY 2 DESC")
        total = sum(r["n"] for r in rows)
        for r in rows:
            print(f"  {r['event_type']:<22} {r['n']:>8}")
        print(f"  {'total':<22} {total:>8}")
    finally:
        await conn.close()

asyncio.run(main())
PY
