"""The ledger's table and its migrations (versions 1-9)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from graphthrift.store.migration import Migration

metadata = MetaData()

LEDGER_TABLE = "graphthrift_ledger"

ledger_table = Table(
    LEDGER_TABLE,
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("tenant_id", Text),
    Column("feature", Text),
    Column("route", Text),
    Column("prompt_version", Text),
    Column("model", Text),
    Column("node", Text),
    Column("thread_id", Text),
    Column("run_id", Text),
    Column("call_id", Text),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_usd", Float),
    Column("latency_ms", Float),
    Column("success", Boolean, nullable=False),
    Column("error_type", Text),
    Column("usage_source", Text, nullable=False),
    Column("retry", Boolean, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    # added in migration 2: what each mechanism saved
    Column("saved_usd", Float),
    Column("saved_tokens", BigInteger, nullable=False),
    Column("layer", Text),
    Column("extra", JSONB),
    # added in migration 3: prompt-cache writes and what the provider's cache saved
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("cache_savings_usd", Float),
)


LEDGER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "ledger",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
                id bigserial PRIMARY KEY,
                ts timestamptz NOT NULL DEFAULT now(),
                kind text NOT NULL DEFAULT 'llm',
                tenant_id text, feature text, route text, prompt_version text,
                model text, node text, thread_id text, run_id text, call_id text,
                input_tokens bigint NOT NULL DEFAULT 0,
                output_tokens bigint NOT NULL DEFAULT 0,
                cached_tokens bigint NOT NULL DEFAULT 0,
                reasoning_tokens bigint NOT NULL DEFAULT 0,
                cost_usd double precision,
                latency_ms double precision,
                success boolean NOT NULL DEFAULT true,
                error_type text,
                usage_source text NOT NULL DEFAULT 'provider',
                retry boolean NOT NULL DEFAULT false,
                attempt integer NOT NULL DEFAULT 1,
                streamed boolean NOT NULL DEFAULT false
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_ts ON {LEDGER_TABLE} (ts)",
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_tenant_ts ON {LEDGER_TABLE} (tenant_id, ts)",
        ),
    ),
    Migration(
        2,
        "ledger savings columns",
        (
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS saved_usd double precision",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS saved_tokens bigint NOT NULL DEFAULT 0",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS layer text",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS extra jsonb",
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_kind_ts ON {LEDGER_TABLE} (kind, ts)",
        ),
    ),
    Migration(
        3,
        "ledger prompt-cache write columns",
        (
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS cache_write_tokens bigint NOT NULL DEFAULT 0",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS cache_savings_usd double precision",
        ),
    ),
)
