"""Tables of the exact and semantic caches (migration versions 10-19)."""

from __future__ import annotations

from graphthrift._schema import Migration

CACHE_MIGRATIONS: tuple[Migration, ...] = ()
