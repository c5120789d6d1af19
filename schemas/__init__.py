"""Avro schemas of the frame events, shipped as package data ``tracker.schemas``.

This file only makes the folder a package, so importlib.resources finds it in an
editable install and in an installed wheel alike (pyproject.toml maps it).
"""
