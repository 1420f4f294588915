"""Tables of the budgets (migration versions 20-29).

- ``graphthrift_budget_spend``: one row per scope per UTC day (per run for ``run`` scopes,
  under the sentinel day 1970-01-01), holding what was spent and what is reserved.
- ``graphthrift_budget_reservations``: one row per open reservation, so a reservation left
  by a crashed process is reclaimed once it expires.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, DateTime, Float, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from graphthrift.store.migration import Migration

SPEND_TABLE = "graphthrift_budget_spend"
RESERVATIONS_TABLE = "graphthrift_budget_reservations"

budget_metadata = MetaData()

budget_spend_table = Table(
    SPEND_TABLE,
    budget_metadata,
    Column("scope_kind", Text, primary_key=True),
    Column("scope_key", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("spent_usd", Float, nullable=False),
    Column("spent_tokens", BigInteger, nullable=False),
    Column("reserved_usd", Float, nullable=False),
    Column("reserved_tokens", BigInteger, nullable=False),
    Column("calls", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

budget_reservations_table = Table(
    RESERVATIONS_TABLE,
    budget_metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("scopes", JSONB, nullable=False),
    Column("usd", Float, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("model", Text),
)

BUDGET_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        20,
        "budget spend and reservations",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {SPEND_TABLE} (
                scope_kind text NOT NULL,
                scope_key text NOT NULL,
                day date NOT NULL,
                spent_usd double precision NOT NULL DEFAULT 0,
                spent_tokens bigint NOT NULL DEFAULT 0,
                reserved_usd double precision NOT NULL DEFAULT 0,
                reserved_tokens bigint NOT NULL DEFAULT 0,
                calls bigint NOT NULL DEFAULT 0,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (scope_kind, scope_key, day)
            )
            """,
            f"""
            CREATE TABLE IF NOT EXISTS {RESERVATIONS_TABLE} (
                id text PRIMARY KEY,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL,
                scopes jsonb NOT NULL,
                usd double precision NOT NULL DEFAULT 0,
                tokens bigint NOT NULL DEFAULT 0,
                model text
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {RESERVATIONS_TABLE}_expires"
            f" ON {RESERVATIONS_TABLE} (expires_at)",
        ),
    ),
)
