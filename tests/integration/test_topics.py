"""``tracker topics``: the tracker's topics made as the settings say (partitions, replication
factor, and min.insync.replicas as a topic-level setting when one is configured), and a second run
that finds them there and changes nothing."""

from __future__ import annotations

import json

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import fresh_settings
from tests.integration.helpers import run_cli
from tracker.adapters.kafka import topic_partitions
from tracker.config import Settings

TOPIC_CONFIG = 1  # DescribeConfigs v1+ config_source: set on the topic itself


async def topic_configs(settings: Settings, topic: str) -> dict[str, tuple[str, int]]:
    """A topic's configuration as the broker describes it: name -> (value, where it comes from)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(error, _, _, name, entries)] = resp.resources
    assert error == 0 and name == topic, resp
    assert resp.API_VERSION >= 1, resp  # entries: (name, value, read_only, config_source, ...)
    return {e[0]: (e[1], e[3]) for e in entries}


async def test_topics_are_made_with_the_configured_min_isr_and_left_alone_once_there() -> None:
    async with fresh_settings(topic_partitions=3, topic_min_insync_replicas=1) as s:
        out = json.loads(run_cli(s, "topics", "--json").stdout)
        names = [*s.topics.events, s.topics.dlq]
        assert (sorted(out["created"]), out["existing"]) == (sorted(names), [])
        for topic in names:
            assert len(await topic_partitions(s.kafka, [topic])) == 3
            # set on the topic itself, not inherited from the broker's default
            assert (await topic_configs(s, topic))["min.insync.replicas"] == ("1", TOPIC_CONFIG)
        again = run_cli(s, "topics")
        assert again.stdout.strip() == f"already there: {', '.join(names)}"


async def test_without_a_min_isr_the_topics_take_the_brokers() -> None:
    async with fresh_settings() as s:
        run_cli(s, "topics")
        value, source = (await topic_configs(s, s.topics.camera))["min.insync.replicas"]
        assert source != TOPIC_CONFIG, (value, source)
