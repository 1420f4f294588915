"""Tables of the operations layer (migration versions 40-49).

- ``graphthrift_batch_jobs``: one row per Batch API job, keyed by a hash of its requests, so
  a restarted process that runs the same work finds the job already submitted and polls it
  instead of paying for it twice.
- ``graphthrift_batch_items``: one row per request of a job: its provider body, its result
  or error, how often it was tried, and whether its ledger row was booked (exactly once).
- ``graphthrift_distill_captures``: opt-in captured prompts and final answers for a
  distillation export, redacted before they are written, each with its expiry.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from graphthrift.store.migration import Migration

BATCH_JOBS_TABLE = "graphthrift_batch_jobs"
BATCH_ITEMS_TABLE = "graphthrift_batch_items"
DISTILL_TABLE = "graphthrift_distill_captures"

batch_metadata = MetaData()

batch_jobs_table = Table(
    BATCH_JOBS_TABLE,
    batch_metadata,
    Column("id", Text, primary_key=True),
    Column("key", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text),
    Column("status", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("provider_batch_id", Text),
    Column("submissions", Integer, nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("tags", JSONB),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

batch_items_table = Table(
    BATCH_ITEMS_TABLE,
    batch_metadata,
    Column("job_id", Text, primary_key=True),
    Column("custom_id", Text, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("tags", JSONB),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("result", JSONB),
    Column("error", Text),
    Column("error_type", Text),
    Column("booked", Boolean, nullable=False),
)

BATCH_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        40,
        "batch jobs and items",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {BATCH_JOBS_TABLE} (
                id text PRIMARY KEY,
                key text NOT NULL,
                provider text NOT NULL,
                model text,
                status text NOT NULL DEFAULT 'queued',
                round integer NOT NULL DEFAULT 0,
                provider_batch_id text,
                submissions integer NOT NULL DEFAULT 0,
                lease_until timestamptz,
                tags jsonb,
                error text,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            f"""
            CREATE TABLE IF NOT EXISTS {BATCH_ITEMS_TABLE} (
                job_id text NOT NULL REFERENCES {BATCH_JOBS_TABLE} (id) ON DELETE CASCADE,
                custom_id text NOT NULL,
                position integer NOT NULL,
                body jsonb NOT NULL,
                tags jsonb,
                status text NOT NULL DEFAULT 'pending',
                attempts integer NOT NULL DEFAULT 0,
                result jsonb,
                error text,
                error_type text,
                booked boolean NOT NULL DEFAULT false,
                PRIMARY KEY (job_id, custom_id)
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {BATCH_JOBS_TABLE}_status ON {BATCH_JOBS_TABLE} (status)",
            f"CREATE INDEX IF NOT EXISTS {BATCH_JOBS_TABLE}_key ON {BATCH_JOBS_TABLE} (key)",
        ),
    ),
    Migration(
        41,
        "distillation captures",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {DISTILL_TABLE} (
                id bigserial PRIMARY KEY,
                ts timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL,
                tenant_id text, feature text, route text, prompt_version text, model text,
                prompt jsonb NOT NULL,
                answer text NOT NULL,
                success boolean NOT NULL DEFAULT true,
                hash text NOT NULL
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {DISTILL_TABLE}_feature_ts"
            f" ON {DISTILL_TABLE} (feature, route, ts)",
            f"CREATE INDEX IF NOT EXISTS {DISTILL_TABLE}_expires ON {DISTILL_TABLE} (expires_at)",
        ),
    ),
)
