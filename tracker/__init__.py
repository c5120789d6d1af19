"""detektor-tracker: follow every video frame from capture to completion.

Layers (imports flow downwards only): ``domain``/``events`` (pure data) →
``codec`` → Kafka and PostgreSQL adapters → services (publisher and the
``repository`` services write through, event-store consumer) → CLI and HTTP
API. ``telemetry``, ``logs`` and ``metrics`` are what services instrument
themselves with; ``docs/instrumenting.md`` shows how.
"""

__version__ = "0.1.0"
