"""Adapters: the clients of the outside systems, and nothing of the domain's rules.

- :mod:`tracker.adapters.kafka`: aiokafka clients (construction, security, topics).
- :mod:`tracker.adapters.postgres`: asyncpg pools, error translation, retries, migrations.
- :mod:`tracker.adapters.dead_letters`: the dead-letter topic.
- :mod:`tracker.adapters.progress`: progress samples a worker records as it goes.
"""
