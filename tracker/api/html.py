"""Escaping for the web UI's pages: every value is escaped unless it is markup
this package built.

Pages are built from ``render(template, **values)``: each value is escaped
with ``html.escape`` (quotes too, so attribute values are safe) unless it is a
``Markup`` that ``render`` or ``join`` returned. A frame id, a camera id or an
error message holding ``<script>`` therefore shows as text. URLs that reach an
``href`` go through ``safe_url`` first, so no ``javascript:`` link can be made
from data.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

DASH = "\u2013"  # what an empty cell shows


class Markup(str):
    """HTML built by this package from escaped parts: not escaped again."""

    __slots__ = ()


def esc(value: Any) -> Markup:
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def render(template: str, **values: Any) -> Markup:
    """``template`` with its ``{name}`` fields filled by the escaped values."""
    return Markup(template.format_map({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Any], sep: str = "") -> Markup:
    return Markup(esc(sep).join(esc(p) for p in parts))


def safe_url(url: str | None) -> str:
    """``url`` if it is an http(s) or same-site address, else ``#``."""
    if not url:
        return "#"
    lowered = url.strip().lower()
    if lowered.startswith(("http://", "https://")) or (url.startswith("/") and not url.startswith("//")):
        return url
    return "#"


def path_part(value: str) -> str:
    """One path segment: every reserved character (``/`` too) percent-encoded."""
    return quote(value, safe="")


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return DASH
    if ms >= 10_000:
        return f"{ms / 1000:,.1f} s"
    return f"{ms:,.1f} ms"


def fmt_time(iso: str | None) -> str:
    """An ISO time as ``2026-01-01 10:00:00.123Z`` (milliseconds, UTC)."""
    if not iso:
        return DASH
    day, _, rest = iso.partition("T")
    clock = rest.rstrip("Z")
    if "." in clock:
        whole, frac = clock.split(".", 1)
        clock = f"{whole}.{frac[:3]}"
    return f"{day} {clock}Z"
