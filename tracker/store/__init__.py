"""The event store: ``frame_events``, appended once per event.

- :mod:`tracker.store.ports`: what the consumer asks of a store and a dead-letter sink.
- :mod:`tracker.store.batch`: storing one decoded batch (validation, lifecycle flags, dead letters).
- :mod:`tracker.store.postgres` and :mod:`tracker.store.in_memory`: the two adapters of the port.
- :mod:`tracker.store.lifecycle`: checks on stored events (after-terminal, conflicting terminal).
- :mod:`tracker.store.consumer`: the ``<prefix>.event-store`` consumer group, on the worker runtime.
"""
