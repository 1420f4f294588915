"""Tables of the exact and semantic caches (migration versions 10-19).

- ``graphthrift_cache_entries``: one row per cached answer, for both layers (``layer`` is
  ``exact`` or ``semantic``). Every row carries what it may be served to (tenant_id, scope,
  namespace) and what it was produced with (prompt, model and corpus versions, embedding
  model, context fingerprint); lookups filter on all of them with indexed equality.
  ``embedding`` is an untyped ``vector`` so that embedders of any size can share the table;
  each size has its own partial HNSW index on ``embedding::vector(dim)`` (384, MiniLM's size,
  is created by migration 10; other sizes by ``SemanticCache`` on first use).
- ``graphthrift_cache_shadow``: what shadow mode would have served, and, once the fresh
  answer is known, whether serving it would have been right.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from graphthrift.store.migration import Migration

ENTRIES_TABLE = "graphthrift_cache_entries"
SHADOW_TABLE = "graphthrift_cache_shadow"

cache_metadata = MetaData()

cache_entries_table = Table(
    ENTRIES_TABLE,
    cache_metadata,
    Column("id", BigInteger, primary_key=True),
    Column("layer", Text, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("corpus_version", Text, nullable=False),
    Column("embedding_model", Text, nullable=False),
    Column("context_hash", Text, nullable=False),
    Column("key_hash", Text, nullable=False),
    Column("query", Text, nullable=False),
    Column("normalized_query", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("payload", JSONB),
    Column("evidence_ids", ARRAY(Text), nullable=False),
    Column("model", Text),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("dim", SmallInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
    Column("hits", BigInteger, nullable=False),
    Column("obs_sim", ARRAY(Float)),
    Column("obs_ok", ARRAY(Boolean)),
)

cache_shadow_table = Table(
    SHADOW_TABLE,
    cache_metadata,
    Column("id", BigInteger, primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("layer", Text, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("entry_id", BigInteger),
    Column("similarity", Float),
    Column("query", Text, nullable=False),
    Column("model", Text),
    Column("would_save_usd", Float),
    Column("correct", Boolean),
)


def hnsw_index_sql(dim: int) -> str:
    """The partial HNSW (cosine) index serving embeddings of size ``dim``."""
    if not 1 <= dim <= 2000:
        raise ValueError(f"pgvector HNSW indexes vectors of 1..2000 dimensions, got {dim}")
    return (
        f"CREATE INDEX IF NOT EXISTS {ENTRIES_TABLE}_hnsw_{dim} ON {ENTRIES_TABLE} "
        f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) "
        f"WITH (m = 16, ef_construction = 64) WHERE layer = 'semantic' AND dim = {dim}"
    )


_CACHE_STEPS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        10,
        "cache entries",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {ENTRIES_TABLE} (
                id bigserial PRIMARY KEY,
                layer text NOT NULL,
                tenant_id text NOT NULL DEFAULT '',
                scope text NOT NULL DEFAULT '',
                namespace text NOT NULL DEFAULT 'default',
                prompt_version text NOT NULL DEFAULT '',
                model_version text NOT NULL DEFAULT '',
                corpus_version text NOT NULL DEFAULT '',
                embedding_model text NOT NULL DEFAULT '',
                context_hash text NOT NULL DEFAULT '',
                key_hash text NOT NULL,
                query text NOT NULL,
                normalized_query text NOT NULL,
                answer text NOT NULL,
                payload jsonb,
                evidence_ids text[] NOT NULL DEFAULT '{{}}',
                model text,
                input_tokens integer NOT NULL DEFAULT 0,
                output_tokens integer NOT NULL DEFAULT 0,
                dim smallint,
                embedding vector,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz,
                last_used_at timestamptz NOT NULL DEFAULT now(),
                hits bigint NOT NULL DEFAULT 0,
                obs_sim double precision[],
                obs_ok boolean[]
            )
            """,
            # exact lookups and upserts: one row per key within a tenant's namespace
            f"CREATE UNIQUE INDEX IF NOT EXISTS {ENTRIES_TABLE}_key ON {ENTRIES_TABLE}"
            " (layer, tenant_id, namespace, key_hash)",
            # the filters of a semantic lookup
            f"CREATE INDEX IF NOT EXISTS {ENTRIES_TABLE}_filters ON {ENTRIES_TABLE}"
            " (tenant_id, namespace, scope, prompt_version, model_version, corpus_version,"
            " embedding_model, context_hash) WHERE layer = 'semantic'",
            # eviction (least recently used first, per tenant and namespace) and expiry
            f"CREATE INDEX IF NOT EXISTS {ENTRIES_TABLE}_lru ON {ENTRIES_TABLE}"
            " (tenant_id, namespace, layer, last_used_at)",
            f"CREATE INDEX IF NOT EXISTS {ENTRIES_TABLE}_expires ON {ENTRIES_TABLE} (expires_at)"
            " WHERE expires_at IS NOT NULL",
            hnsw_index_sql(384),
        ),
    ),
    (
        11,
        "cache shadow log",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {SHADOW_TABLE} (
                id bigserial PRIMARY KEY,
                ts timestamptz NOT NULL DEFAULT now(),
                layer text NOT NULL,
                tenant_id text NOT NULL DEFAULT '',
                namespace text NOT NULL DEFAULT 'default',
                entry_id bigint,
                similarity double precision,
                query text NOT NULL,
                model text,
                would_save_usd double precision,
                correct boolean
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {SHADOW_TABLE}_scope ON {SHADOW_TABLE}"
            " (tenant_id, namespace, ts)",
        ),
    ),
)


CACHE_MIGRATIONS: tuple[Migration, ...] = tuple(Migration(v, n, s) for v, n, s in _CACHE_STEPS)
