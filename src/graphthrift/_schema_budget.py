"""Tables of the budgets (migration versions 20-29)."""

from __future__ import annotations

from graphthrift._schema import Migration

BUDGET_MIGRATIONS: tuple[Migration, ...] = ()
