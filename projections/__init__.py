"""Projection workers: read models folded from frame events, and their rebuild.

Depends on ``tracker``; ``tracker`` never imports this package.
"""
