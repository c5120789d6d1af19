"""Authenticated, encrypted links: the whole pipeline over SASL/SCRAM-SHA-512 + TLS to Kafka (each
role its own principal, with only the ACLs it needs) and TLS + SCRAM to PostgreSQL with
TRACKER_DATABASE_SSLMODE=verify-full; and every way to get the credentials wrong ends in one line,
exit 1, no traceback, no secret, and nothing lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.helpers import publish_simulation, run_cli
from tests.support.certificates import make_ca
from tests.support.cluster import Namespace
from tests.support.cluster_checks import final_checks
from tracker.adapters.postgres import connect
from tracker.config import Settings

pytestmark = pytest.mark.cluster


async def test_the_pipeline_runs_over_authenticated_encrypted_links(ns: Namespace) -> None:
    result = await publish_simulation(ns.publisher, cameras=3, fps=10, duration_s=2, seed=31)
    out = run_cli(ns.event_store, "consume", "--until-idle", "--metrics-port", "0", "--json").stdout
    assert json.loads(out)["stored"] == result.events
    run_cli(ns.projections, "project", "--until-idle", "--metrics-port", "0")
    await final_checks(ns, result.event_ids, "secure pipeline")
    # The query side, over verify-full TLS too.
    conn = await connect(ns.admin.database)
    try:
        frame_id = await conn.fetchval("SELECT frame_id FROM frame_metadata LIMIT 1")
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    journey = json.loads(run_cli(ns.admin, "journey", str(frame_id), "--json").stdout)
    assert journey["frame_id"] == str(frame_id) and journey["events"]
    status = json.loads(run_cli(ns.admin, "status", "--json").stdout)
    assert status, status
    # A rebuild reads the topics without a group: the projections principal may.
    run_cli(ns.projections, "replay", "--source", "topics")
    await final_checks(ns, result.event_ids, "secure pipeline, rebuilt")


def _with_password(settings: Settings, password: str) -> Settings:
    url = urlsplit(settings.database.url.get())
    netloc = f"{url.username}:{password}@{url.hostname}:{url.port}"
    return settings.with_overrides(database_url=urlunsplit(url._replace(netloc=netloc)))


async def test_wrong_credentials_fail_in_one_line_and_lose_nothing(ns: Namespace, tmp_path: Path) -> None:
    result = await publish_simulation(ns.publisher, cameras=2, fps=10, duration_s=2, seed=32)
    other_ca = str(make_ca(tmp_path))
    es = ns.event_store
    consume = ("consume", "--until-idle", "--metrics-port", "0")
    cases: dict[str, tuple[Settings, tuple[str, ...]]] = {
        "wrong Kafka password": (es.with_overrides(kafka_sasl_password="not-the-password"), consume),
        "Kafka's CA not trusted": (es.with_overrides(kafka_ssl_cafile=other_ca), consume),
        "no ACL for the event-store group": (ns.projections, consume),
        "no ACL to write the topics": (es, ("simulate", "--duration", "1", "--fps", "5")),
        "wrong database password": (_with_password(es, "not-the-password"), consume),
        "database's CA not trusted": (es.with_overrides(database_sslrootcert=other_ca), consume),
        "database without TLS": (es.with_overrides(database_sslmode="disable"), consume),
    }
    secrets = [*ns.secrets(), "not-the-password"]
    for name, (settings, args) in cases.items():
        p = run_cli(settings, *args, check=False, timeout=60)
        text = p.stdout + p.stderr
        said = [line for line in text.splitlines() if not line.startswith("{")]  # JSON log lines aside
        print(f"\n[{name}] exit {p.returncode}: {' | '.join(said)}")
        assert p.returncode == 1, (name, text)
        assert len(said) == 1 and said[0].startswith("tracker: error: "), (name, text)
        assert "Traceback" not in text, (name, text)
        assert not [s for s in secrets if s in text], name
    # Nothing was lost, nor committed, by the failed attempts: the right principal stores it all.
    await final_checks(ns, result.event_ids, "after wrong credentials")
