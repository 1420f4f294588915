"""The SQL the cache layers run on the entry and shadow tables, one builder per statement.

The layers (``graphthrift.cache.base``) decide what to run; this module says how, so the
table's columns, its conflict key and its eviction order are written down once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from graphthrift.cache.db import Plan, Sql
from graphthrift.cache.keys import CacheQuery, CacheScope
from graphthrift.cache.schema import ENTRIES_TABLE, SHADOW_TABLE
from graphthrift.cache.scope import SCOPE_FIELDS

__all__ = [
    "ENTRY_COLUMNS",
    "MAX_OBSERVATIONS",
    "clear_sql",
    "delete_entry_sql",
    "evict_plan",
    "observation_sql",
    "purge_sql",
    "scope_filter",
    "scope_params",
    "shadow_insert_sql",
    "shadow_judged_sql",
    "shadow_report_sql",
    "touch_sql",
    "upsert_entry_sql",
    "vector_literal",
]

#: The columns a lookup reads from an entry.
ENTRY_COLUMNS = (
    "id, query, answer, payload, evidence_ids, model, input_tokens, output_tokens, obs_sim, obs_ok"
)
#: Observations (similarity, correct) kept on an entry's row: the latest ones.
MAX_OBSERVATIONS = 256

_VECTOR_FORMATS: dict[int, str] = {}


def vector_literal(vector: np.ndarray[Any, Any]) -> str:
    """pgvector's text form, 7 significant digits (one %-format: ~3x faster than a join)."""
    values = tuple(np.asarray(vector, dtype=np.float64).ravel().tolist())
    fmt = _VECTOR_FORMATS.get(len(values))
    if fmt is None:
        fmt = _VECTOR_FORMATS[len(values)] = "[" + ",".join(["%.7g"] * len(values)) + "]"
    return fmt % values


def scope_params(scope: CacheScope) -> dict[str, Any]:
    """The scope fields as bind parameters ``s_<field>``."""
    return {f"s_{k}": getattr(scope, k) for k in SCOPE_FIELDS}


def scope_filter(
    scope: CacheScope, embedding_model: str, query: CacheQuery
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (and its parameters) of a lookup: every scope field, the embedding
    model and the context fingerprint must match, and the entry must not have expired."""
    params = scope_params(scope)
    params["s_embedding_model"] = embedding_model
    params["s_context_hash"] = query.context
    clause = (
        " AND ".join(f"{k} = :s_{k}" for k in (*SCOPE_FIELDS, "embedding_model"))
        + " AND context_hash = :s_context_hash"
        + " AND (expires_at IS NULL OR expires_at > now())"
    )
    return clause, params


def upsert_entry_sql(params: Mapping[str, Any]) -> Sql:
    """Insert an entry, or replace the answer of the one with the same key (its observations
    are dropped: they judged the old answer). Returns the entry's id."""
    return Sql(
        f"INSERT INTO {ENTRIES_TABLE} (layer, tenant_id, scope, namespace, prompt_version,"
        " model_version, corpus_version, embedding_model, context_hash, key_hash, query,"
        " normalized_query, answer, payload, evidence_ids, model, input_tokens, output_tokens,"
        " dim, embedding, expires_at)"
        " VALUES (:layer, :s_tenant_id, :s_scope, :s_namespace, :s_prompt_version,"
        " :s_model_version, :s_corpus_version, :em, :ctx, :kh, :q, :nq, :a,"
        " CAST(:p AS jsonb), :ev, :m, :it, :ot, :dim, CAST(:v AS vector), :exp)"
        " ON CONFLICT (layer, tenant_id, namespace, key_hash) DO UPDATE SET"
        " answer = EXCLUDED.answer, payload = EXCLUDED.payload,"
        " evidence_ids = EXCLUDED.evidence_ids, model = EXCLUDED.model,"
        " input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,"
        " embedding = EXCLUDED.embedding, dim = EXCLUDED.dim, query = EXCLUDED.query,"
        " expires_at = EXCLUDED.expires_at, created_at = now(), last_used_at = now(),"
        " obs_sim = NULL, obs_ok = NULL"
        " RETURNING id",
        dict(params),
    )


def evict_plan(layer: str, scope: CacheScope, max_entries: int | None) -> Plan[None]:
    """Delete one tenant's namespace's expired entries, then the least recently used (by
    last hit, else creation) beyond ``max_entries`` (a sub-plan: ``yield from`` it)."""
    where = "tenant_id = :t AND namespace = :n AND layer = :l"
    params: dict[str, Any] = {"t": scope.tenant_id, "n": scope.namespace, "l": layer}
    yield Sql(
        f"DELETE FROM {ENTRIES_TABLE} WHERE {where} AND expires_at <= now()",
        params,
        fetch=False,
    )
    if max_entries is not None:
        yield Sql(
            f"DELETE FROM {ENTRIES_TABLE} WHERE id IN (SELECT id FROM {ENTRIES_TABLE}"
            f" WHERE {where} ORDER BY last_used_at DESC, id DESC OFFSET :cap)",
            {**params, "cap": max_entries},
            fetch=False,
        )


def touch_sql(touched: Mapping[int, int]) -> Sql:
    """Add hit counts and mark entries used, locking rows in id order.

    Caches of one process, or of several, flush overlapping sets of entries at the same
    time; locking in a fixed order keeps two flushes from deadlocking each other.
    """
    ids = sorted(touched)
    return Sql(
        f"UPDATE {ENTRIES_TABLE} AS e SET hits = e.hits + t.n, last_used_at = now()"
        f" FROM (SELECT l.id, u.n FROM {ENTRIES_TABLE} AS l"
        " JOIN unnest(CAST(:ids AS bigint[]), CAST(:ns AS bigint[])) AS u(id, n)"
        " ON l.id = u.id ORDER BY l.id FOR UPDATE OF l) AS t"
        " WHERE e.id = t.id",
        {"ids": ids, "ns": [touched[i] for i in ids]},
        fetch=False,
    )


def observation_sql(entry_id: int, similarity: float, correct: bool) -> Sql:
    """Append one (similarity, correct) observation to an entry, keeping the latest ones."""
    return Sql(
        f"UPDATE {ENTRIES_TABLE} SET"
        f" obs_sim = (coalesce(obs_sim, '{{}}') || CAST(:s AS double precision))"
        f"[greatest(1, coalesce(array_length(obs_sim, 1), 0) + 2 - {MAX_OBSERVATIONS}):],"
        f" obs_ok = (coalesce(obs_ok, '{{}}') || CAST(:ok AS boolean))"
        f"[greatest(1, coalesce(array_length(obs_ok, 1), 0) + 2 - {MAX_OBSERVATIONS}):]"
        " WHERE id = :id",
        {"s": float(similarity), "ok": bool(correct), "id": int(entry_id)},
        fetch=False,
    )


def shadow_insert_sql(params: Mapping[str, Any]) -> Sql:
    """Log a would-be hit of shadow mode; returns its id (to judge it later)."""
    return Sql(
        f"INSERT INTO {SHADOW_TABLE} (layer, tenant_id, namespace, entry_id, similarity,"
        " query, model, would_save_usd) VALUES (:l, :t, :n, :e, :s, :q, :m, :w)"
        " RETURNING id",
        dict(params),
    )


def shadow_judged_sql(shadow_id: int, correct: bool) -> Sql:
    """Record whether a logged would-be hit was right."""
    return Sql(
        f"UPDATE {SHADOW_TABLE} SET correct = :ok WHERE id = :id",
        {"ok": correct, "id": shadow_id},
        fetch=False,
    )


def shadow_report_sql(layer: str, scope: CacheScope) -> Sql:
    """What shadow mode logged for one tenant's namespace (one row of counts)."""
    return Sql(
        "SELECT count(*) AS would_hit, count(correct) AS judged,"
        " count(*) FILTER (WHERE correct) AS right_hits,"
        " coalesce(sum(would_save_usd), 0) AS would_save_usd"
        f" FROM {SHADOW_TABLE} WHERE layer = :l AND tenant_id = :t AND namespace = :n",
        {"l": layer, "t": scope.tenant_id, "n": scope.namespace},
    )


def clear_sql(layer: str, scope: CacheScope, embedding_model: str, all_scopes: bool) -> Sql:
    """Delete a layer's entries of one tenant's namespace (every scope and version, or only
    those matching ``scope`` exactly); returns one row with their count ``n``."""
    if all_scopes:
        return Sql(
            f"WITH d AS (DELETE FROM {ENTRIES_TABLE} WHERE layer = :l AND tenant_id = :t"
            " AND namespace = :n RETURNING 1) SELECT count(*) AS n FROM d",
            {"l": layer, "t": scope.tenant_id, "n": scope.namespace},
        )
    clause, params = scope_filter(scope, embedding_model, CacheQuery(""))
    clause = clause.replace(" AND context_hash = :s_context_hash", "")
    return Sql(
        f"WITH d AS (DELETE FROM {ENTRIES_TABLE} WHERE layer = :l AND {clause}"
        " RETURNING 1) SELECT count(*) AS n FROM d",
        {**params, "l": layer},
    )


def purge_sql() -> Sql:
    """Delete every expired entry of every tenant; returns one row with their count ``n``."""
    return Sql(
        f"WITH d AS (DELETE FROM {ENTRIES_TABLE} WHERE expires_at <= now() RETURNING 1)"
        " SELECT count(*) AS n FROM d"
    )


def delete_entry_sql(entry_id: int) -> Sql:
    """Delete one entry (an exact hit judged wrong: its stored answer is wrong)."""
    return Sql(f"DELETE FROM {ENTRIES_TABLE} WHERE id = :id", {"id": entry_id}, fetch=False)
