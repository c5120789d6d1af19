"""The HTTP interface: ``tracker serve`` (:mod:`tracker.api.app`) and its ``openapi.json``."""
