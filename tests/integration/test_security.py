"""Security defaults: read-only query side, secrets never shown, loopback by default."""

from __future__ import annotations

import pytest

from tests.integration.helpers import run_cli
from tracker.config import Secret, Settings
from tracker.errors import StorageError
from tracker.queries import FrameTrackingQueries


async def test_query_side_cannot_write(settings: Settings) -> None:
    q = await FrameTrackingQueries.connect(settings)
    try:
        role = (await q._fetch("SELECT current_user"))[0][0]
        assert role == "tracker_read"
        for sql in (
            "DELETE FROM frame_events",
            "CREATE TABLE pwned (x int)",
            "UPDATE projection_state SET generation = 99",
        ):
            with pytest.raises(StorageError) as e:
                await q._fetch(sql)
            assert e.value.sqlstate in ("25006", "42501")  # read-only transaction / no privilege
    finally:
        await q.close()


async def test_secrets_never_reach_output_or_logs(settings: Settings) -> None:
    leaky = Settings.from_env(
        database_url=Secret("postgresql://tracker:hunter2-secret@127.0.0.1:1/tracker"),
        kafka_bootstrap=settings.kafka.bootstrap,
        topic_prefix=settings.topics.prefix,
        group_prefix=settings.groups.prefix,
        api_token=Secret("token-xyz"),
        kafka_sasl_password=Secret("sasl-pw"),
    )
    for args in (
        ["config"],
        ["journey", "some-frame"],
        ["status"],
        ["migrate"],
        ["consume", "--until-idle", "--metrics-port", "0"],
    ):
        p = run_cli(
            leaky,
            *args,
            check=False,
            extra_env={
                "TRACKER_API_TOKEN": "token-xyz",
                "TRACKER_KAFKA_SASL_PASSWORD": "sasl-pw",
                # consume retries the unreachable database, logging each try, for this long (default 60)
                "TRACKER_STARTUP_TIMEOUT_S": "6",
            },
        )
        text = p.stdout + p.stderr
        for secret in ("hunter2-secret", "token-xyz", "sasl-pw"):
            assert secret not in text, (args, text)
        if args != ["config"]:
            assert p.returncode == 1 and "Traceback" not in text, (args, text)
    cfg = run_cli(leaky, "config", extra_env={"TRACKER_API_TOKEN": "token-xyz"}).stdout
    assert "TRACKER_DATABASE_URL=postgresql://tracker:****@127.0.0.1:1/tracker" in cfg
    assert "TRACKER_API_TOKEN=****" in cfg and "TRACKER_API_HOST=127.0.0.1" in cfg
