"""detektor-tracker: follow every video frame from capture to completion.

Layers (imports flow downwards only): ``domain``/``events`` (pure data) →
``codec`` → Kafka and PostgreSQL adapters → services (publisher, event-store
consumer) → CLI and HTTP API.
"""

__version__ = "0.1.0"
