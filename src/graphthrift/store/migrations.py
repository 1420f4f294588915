"""Every component's migrations, in one ordered list.

Migrations are numbered and append-only: a schema change is a new entry that keeps existing
rows (``ADD COLUMN``, ``CREATE INDEX``), never an edit of an old one. The store applies the
missing ones on open, under an advisory lock, so concurrent processes migrate once. Each
component declares its own tables in its ``schema`` module.
"""

from __future__ import annotations

from graphthrift.budget.schema import BUDGET_MIGRATIONS
from graphthrift.cache.schema import CACHE_MIGRATIONS
from graphthrift.history.schema import HISTORY_MIGRATIONS
from graphthrift.ledger.schema import LEDGER_MIGRATIONS
from graphthrift.ledger.task_rollups import TASK_ROLLUP_MIGRATIONS
from graphthrift.ops.schema import BATCH_MIGRATIONS
from graphthrift.resilience.schema import RESILIENCE_MIGRATIONS
from graphthrift.store.migration import Migration

__all__ = ["MIGRATIONS", "Migration", "all_migrations"]


def all_migrations() -> tuple[Migration, ...]:
    """Every component's migrations, in version order (ledger 1-9, cache 10-19, budget 20-29,
    resilience 30-39, operations 40-49, history 50-59)."""
    found = (
        *LEDGER_MIGRATIONS,
        *TASK_ROLLUP_MIGRATIONS,
        *CACHE_MIGRATIONS,
        *BUDGET_MIGRATIONS,
        *RESILIENCE_MIGRATIONS,
        *BATCH_MIGRATIONS,
        *HISTORY_MIGRATIONS,
    )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate schema migration versions: {sorted(versions)}")
    return tuple(sorted(found, key=lambda m: m.version))


MIGRATIONS: tuple[Migration, ...] = all_migrations()
