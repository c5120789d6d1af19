"""PostgreSQL migrations, shipped as package data ``tracker.sql``.

This file only makes the folder a package, so importlib.resources finds it in an
editable install and in an installed wheel alike (pyproject.toml maps it).
"""
