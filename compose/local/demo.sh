#!/usr/bin/env bash
# `make demo`: simulated cameras through the real Kafka into the real
# PostgreSQL, then what operators ask of it. Run from the repository root by
# the Makefile (which has already set up the virtualenv and the local stack).
set -euo pipefail
T=.venv/bin/tracker

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "migrations"
$T migrate
step "simulating 4 cameras at 10 fps for 6 s (detect -> analyze -> notify, 8% failures)"
$T simulate --cameras 4 --fps 10 --duration 6 --failure-rate 0.08 --seed "$RANDOM"
step "instrumented example services (examples/): 2 cameras -> a processor, every 4th frame fails"
example=$(.venv/bin/python -m examples.run_pipeline --cameras 2 --frames 4 --fail-every 4 2>/dev/null)
echo "$example" | .venv/bin/python -c \
  'import json,sys; r=json.load(sys.stdin); print("%d frames published by the example services; failed: %s" % (r["frames"], ", ".join(r["failed"]) or "none"))'
step "event-store consumer (group tracker.event-store), until caught up"
$T consume --until-idle --metrics-port 0
step "projection worker (group tracker.projections), until caught up"
$T project --until-idle --metrics-port 0
step "per-camera and per-stage statistics, last hour"
$T stats --hours 1
step "slowest frames, last hour"
$T slow --threshold-ms 0 --hours 1 --limit 5
step "failure analysis, last 24 h"
$T failures --hours 24

completed=$($T slow --threshold-ms 0 --hours 1 --limit 1 --json | .venv/bin/python -c \
  'import json,sys; r=[f for f in json.load(sys.stdin) if f["state"]=="completed"]; print(r[0]["frame_id"] if r else "")')
failed=$($T failures --hours 24 --json | .venv/bin/python -c \
  'import json,sys; r=json.load(sys.stdin)["by_stage_error_camera"]; print(r[0]["sample_frame_id"] if r else "")')
if [ -n "$completed" ]; then step "journey of a completed frame"; $T journey "$completed"; fi
if [ -n "$failed" ]; then step "journey of a failed frame"; $T journey "$failed"; fi
example_failed=$(echo "$example" | .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin)["failed"]; print(r[0] if r else "")')
if [ -n "$example_failed" ]; then
  step "journey of a frame the example processor failed (one trace, camera to processor)"
  $T journey "$example_failed"
fi

step "dead letters and pipeline status"
$T dlq list --limit 5
$T status | grep -v '^  '

step "HTTP API (tracker serve) on 127.0.0.1:8080"
$T serve --port 8080 >/dev/null 2>&1 &
api=$!
trap 'kill $api 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  .venv/bin/python -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=1)' 2>/dev/null && break
  sleep 0.2
done
.venv/bin/python - "$failed" <<'PY'
import json, sys, urllib.request
from urllib.parse import quote
base = "http://127.0.0.1:8080"
ready = json.load(urllib.request.urlopen(base + "/readyz"))
print(f"GET /readyz -> {ready}")
if sys.argv[1]:
    j = json.load(urllib.request.urlopen(f"{base}/api/v1/frames/{quote(sys.argv[1], safe='')}"))
    print(f"GET /api/v1/frames/{sys.argv[1]} -> state {j['state']}, {len(j['events'])} events, "
          f"trace {j['trace']['url'] if j['trace'] else '-'}")
metrics = urllib.request.urlopen(base + "/metrics").read().decode()
print(f"GET /metrics -> {len(metrics.splitlines())} lines of OpenMetrics")
PY
cat <<'TXT'

Where things are, while `tracker serve` runs (start it with .venv/bin/tracker serve):
  web UI    http://127.0.0.1:8080/ui/   (find a frame: search, timeline, "is this normal?"; pipeline page)
  API       http://127.0.0.1:8080/api/v1/...   (endpoints: http://127.0.0.1:8080/openapi.json)
  health    http://127.0.0.1:8080/healthz  http://127.0.0.1:8080/readyz
  metrics   http://127.0.0.1:8080/metrics; workers: tracker consume (:9464), tracker project (:9465)
  traces    set OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER=console) to export spans; journeys link to Jaeger
  stack     make stack-status / make stack-down
TXT
