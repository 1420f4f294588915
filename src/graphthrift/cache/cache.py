"""Exact and semantic answer caches on the shared PostgreSQL + pgvector store.

``ExactCache`` serves an answer when the normalized question, under the same tenant, scope,
namespace and versions, was answered before. ``SemanticCache`` also serves paraphrases: it
embeds the question and searches a pgvector HNSW index (cosine), filtered by the same
indexed columns, and serves the nearest entry when the policy accepts its similarity:

- ``policy="static"`` with ``threshold`` (tune it with ``graphthrift cache tune``);
- ``policy="adaptive"`` with ``max_error=δ``: per-entry thresholds learned from observed
  reuse (verified misses and ``feedback``), serving when the entry's posterior P(correct)
  keeps served hits wrong with probability at most δ (see ``graphthrift.cache.policy``).

Guarantees:

- Isolation: a lookup's WHERE clause names the tenant_id, scope, namespace, prompt, model
  and corpus versions, embedding model and context fingerprint; an entry differing in any
  of them, or expired, is never returned.
- TTL per namespace (``ttl=3600`` or ``ttl={"faq": 86400, "news": 600, "*": 3600}``).
- Size cap per tenant and namespace (``max_entries``): each write evicts expired entries,
  then the least recently used (by last hit, else creation) beyond the cap.
- Fail open: if the database is down or slower than ``timeout`` seconds, a lookup returns
  a miss (counted as ``cache_lookup_failure`` / ``cache_timeout`` in
  ``graphthrift.diagnostics``) and a write is dropped (``cache_store_failure``); the caller
  calls the model as if there were no cache. The deadline covers the database part of a
  lookup; the embedding is computed before it.
- Shadow mode (``shadow=True``) serves nothing but logs what would have hit; when the
  fresh answer is then stored, ``verify(cached, fresh)`` judges the would-be hit, and
  ``shadow_report()`` shows would-be hit rate, precision and savings.
- Keys (``default_key``): the question, folded for case and spaces only, plus a fingerprint
  of the system prompt, the earlier turns and ``context``; an answer that depends on earlier
  turns is kept to the asking user (``user_id``), a first-turn answer is tenant-wide.
- Never stored: graphthrift's own messages, errors, refusals (``storable``; pass the
  answer's message as ``source=``).
- Lexical guard (``SemanticCache``, on by default): a hit whose question differs from the
  query in numbers, identifiers, dates, negation or named entities is a miss.
- Durability: writes use ``synchronous_commit=off``; entries written just before a
  PostgreSQL server crash may be lost (a cache miss later, never a wrong answer).
- Every served hit writes a ``cache_hit`` ledger record (``layer`` = ``exact`` or
  ``semantic``) with the tokens the avoided call would have used, so
  ``ledger.report(by=["layer"])`` shows savings per layer.

Settings: keyword arguments, then ``GRAPHTHRIFT_CACHE_TIMEOUT`` (seconds, default 0.1),
``GRAPHTHRIFT_CACHE_THRESHOLD`` (default 0.92) and ``GRAPHTHRIFT_CACHE_EF_SEARCH``
(default 40: at 100,000 entries it finds the exact nearest entry of the scope for 99.1 % of
banking77 queries, against 99.3 % at 64, and searches about a quarter faster).

Example:
    >>> cache = SemanticCache(store, namespace="faq", ttl=86400, tenant_id="acme")
    >>> cache.update("How do I reset my password?", "Use the 'Forgot password' link.")
    >>> hit = cache.lookup("how can I reset my password")
    >>> hit.answer if hit else None
    "Use the 'Forgot password' link."
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.cache.db import (
    CacheEngines,
    Plan,
    Settings,
    Sql,
    awith_deadline,
    run_async,
    run_sync,
    with_deadline,
)
from graphthrift.cache.guard import Guard, lexical_conflict
from graphthrift.cache.keys import (
    CacheQuery,
    CacheScope,
    KeyFunction,
    default_key,
    fingerprint,
    key_hash,
    normalize_query,
)
from graphthrift.cache.policy import (
    AdaptivePolicy,
    CurvePoint,
    StaticPolicy,
    ThresholdPolicy,
    precision_recall_curve,
    tune_threshold,
)
from graphthrift.cache.schema import ENTRIES_TABLE, SHADOW_TABLE, hnsw_index_sql
from graphthrift.config import env_float
from graphthrift.embed.embedders import Embedder, as_embedder, default_embedder
from graphthrift.errors import GraphthriftError
from graphthrift.ledger.records import LedgerRecord, plausible_tokens
from graphthrift.provenance import unstorable
from graphthrift.store.postgres import Store
from graphthrift.text.repair import clean_text, needs_repair

__all__ = [
    "AdaptivePolicy",
    "CacheHit",
    "CacheQuery",
    "CacheScope",
    "CacheUnavailable",
    "CurvePoint",
    "ExactCache",
    "SemanticCache",
    "StaticPolicy",
    "default_key",
    "fingerprint",
    "lexical_conflict",
    "normalize_query",
    "precision_recall_curve",
    "tune_threshold",
]

logger = logging.getLogger("graphthrift.cache")

Layer = Literal["exact", "semantic"]
Verify = Callable[[str, str], bool]
_SCOPE_FIELDS = (
    "tenant_id",
    "scope",
    "namespace",
    "prompt_version",
    "model_version",
    "corpus_version",
)
_PENDING_MAX = 10_000
_MAX_OBSERVATIONS = 256
_EF_SEARCH = 40
_TOUCH_DELAY = 1.0  # seconds between batched hit-count writes
_COLUMNS = (
    "id, query, answer, payload, evidence_ids, model, input_tokens, output_tokens, obs_sim, obs_ok"
)


class CacheUnavailable(GraphthriftError):
    """A cache operation that does not fail open (``clear``, ``shadow_report``) failed."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"cache {operation} failed: {reason}")


class BadScopeText(ValueError):
    """A cache scope field holds a NUL byte or a lone surrogate: the entry is skipped."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        super().__init__(f"cache scope fields {fields} hold a NUL byte or a lone surrogate")


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A served answer and where it came from.

    ``hit_id`` identifies this reuse for ``cache.feedback(hit_id, correct)``.
    """

    layer: Layer
    entry_id: int
    answer: str
    similarity: float
    query: str
    payload: Any = None
    evidence_ids: tuple[str, ...] = ()
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tenant_id: str = ""
    namespace: str = "default"

    @property
    def hit_id(self) -> str:
        return f"{self.layer}:{self.entry_id}:{self.similarity:.6f}"


@dataclass(slots=True)
class _Pending:
    """A would-be reuse waiting for the fresh answer to be judged against it."""

    entry_id: int
    similarity: float
    cached_answer: str
    shadow_id: int | None = None


@dataclass(slots=True)
class _Decision:
    hit: CacheHit | None
    pending: _Pending | None = None
    pending_key: str = ""


def _env_float(name: str, value: float | None, default: float) -> float:
    return float(value) if value is not None else env_float(name, default)


_VECTOR_FORMATS: dict[int, str] = {}


def _vector_literal(vector: np.ndarray[Any, Any]) -> str:
    """pgvector's text form, 7 significant digits (one %-format: ~3x faster than a join)."""
    values = tuple(np.asarray(vector, dtype=np.float64).ravel().tolist())
    fmt = _VECTOR_FORMATS.get(len(values))
    if fmt is None:
        fmt = _VECTOR_FORMATS[len(values)] = "[" + ",".join(["%.7g"] * len(values)) + "]"
    return fmt % values


def _default_verify(cached: str, fresh: str) -> bool:
    return normalize_query(cached) == normalize_query(fresh)


class _BaseCache:
    """What both layers share: scope defaults, TTL, cap, timeouts, ledger, shadow, feedback."""

    layer: Layer = "exact"

    def __init__(
        self,
        store: Store,
        *,
        namespace: str = "default",
        ttl: float | Mapping[str, float | None] | None = None,
        max_entries: int | None = None,
        timeout: float | None = None,
        write_timeout: float = 2.0,
        ledger: Any = None,
        shadow: bool = False,
        verify: Verify | None = None,
        key_fn: KeyFunction | None = None,
        cache_tool_calls: bool = False,
        ef_search: int | None = None,
        tenant_id: str = "",
        scope: str = "",
        prompt_version: str = "",
        model_version: str = "",
        corpus_version: str = "",
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"store must be a graphthrift.Store, got {type(store).__name__}")
        self.store = store
        self.defaults = CacheScope(
            tenant_id=tenant_id,
            scope=scope,
            namespace=namespace,
            prompt_version=prompt_version,
            model_version=model_version,
            corpus_version=corpus_version,
        )
        self.ttl = ttl
        for ns_ttl in ttl.values() if isinstance(ttl, Mapping) else [ttl]:
            if ns_ttl is not None and ns_ttl <= 0:
                raise ValueError(f"ttl must be > 0 seconds or None, got {ns_ttl}")
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries}")
        self.max_entries = max_entries
        self.timeout = _env_float("GRAPHTHRIFT_CACHE_TIMEOUT", timeout, 0.1)
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        self.write_timeout = write_timeout
        self.ledger = ledger
        self.shadow = shadow
        self.verify: Verify = verify or _default_verify
        self.key_fn: Callable[[Any, Any], CacheQuery] = (
            (lambda q, ctx: _apply_context(key_fn(q), ctx)) if key_fn else default_key
        )
        self.cache_tool_calls = cache_tool_calls
        ef = int(_env_float("GRAPHTHRIFT_CACHE_EF_SEARCH", ef_search, _EF_SEARCH))
        self._engines = CacheEngines.for_store(store, Settings(self.timeout, ef))
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._touched: dict[int, int] = {}
        self._touch_scheduled = False

    # -- scope and keys ---------------------------------------------------------------------

    @property
    def embedding_model(self) -> str:
        return ""

    def _scope(self, overrides: Mapping[str, Any], key: CacheQuery | None = None) -> CacheScope:
        """The request's scope: the defaults, overridden by the call's non-None fields.

        ``user_id`` (what adapters pass for the asking user) becomes the ``scope`` only when
        the key depends on earlier turns (``key.history``) and no explicit ``scope`` is
        given: a first-turn question is shared by the tenant's users, a follow-up is not
        (issue 11, item 3).
        """
        unknown = set(overrides) - {*_SCOPE_FIELDS, "user_id"}
        if unknown:
            raise TypeError(f"unknown cache scope fields {sorted(unknown)}")
        bad = sorted(k for k, v in overrides.items() if isinstance(v, str) and needs_repair(v))
        if bad:
            # A repaired id could equal another tenant's: no entry is read or written for it.
            raise BadScopeText(bad)
        fields = {k: overrides.get(k) for k in _SCOPE_FIELDS}
        user = overrides.get("user_id")
        history = key is not None and key.history
        if history and fields["scope"] in (None, "") and user not in (None, ""):
            fields["scope"] = user
        return self.defaults.merged(fields)

    def _ttl_for(self, namespace: str) -> float | None:
        if isinstance(self.ttl, Mapping):
            return self.ttl.get(namespace, self.ttl.get("*"))
        return self.ttl

    def _filters(self, scope: CacheScope, query: CacheQuery) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {f"s_{k}": getattr(scope, k) for k in _SCOPE_FIELDS}
        params["s_embedding_model"] = self.embedding_model
        params["s_context_hash"] = query.context
        clause = (
            " AND ".join(f"{k} = :s_{k}" for k in (*_SCOPE_FIELDS, "embedding_model"))
            + " AND context_hash = :s_context_hash"
            + " AND (expires_at IS NULL OR expires_at > now())"
        )
        return clause, params

    # -- the lookup plan ---------------------------------------------------------------------

    def _candidate_sql(
        self, scope: CacheScope, query: CacheQuery, vector: str | None, kh: str
    ) -> list[Sql]:
        raise NotImplementedError

    def _policy_serves(self, similarity: float, row: Mapping[str, Any]) -> bool:
        return True

    def _guard_allows(self, query: str, cached: str) -> bool:
        """The lexical guard of the semantic layer (the exact layer matches the text itself)."""
        return True

    def _explores(self, similarity: float) -> bool:
        """Whether a candidate that is not served should be judged once the answer is known."""
        return False

    def _lookup_plan(
        self, scope: CacheScope, query: CacheQuery, vector: str | None
    ) -> Plan[_Decision]:
        row: dict[str, Any] | None = None
        pkey = key_hash(self.layer, scope, self.embedding_model, query)
        for statement in self._candidate_sql(scope, query, vector, pkey):
            rows = yield statement
            if rows:
                row = rows[0]
                break
        if row is None:
            return _Decision(None)
        similarity = float(row.get("similarity", 1.0))
        if not self._guard_allows(query.text, str(row["query"])):
            return _Decision(None)
        serve = self._policy_serves(similarity, row)
        hit = CacheHit(
            layer=self.layer,
            entry_id=int(row["id"]),
            answer=row["answer"],
            similarity=similarity,
            query=row["query"],
            payload=row["payload"],
            evidence_ids=tuple(row["evidence_ids"] or ()),
            model=row["model"],
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            tenant_id=scope.tenant_id,
            namespace=scope.namespace,
        )
        if self.shadow:
            if not serve:
                return _Decision(None)
            saved = self._price(hit)
            rows = yield Sql(
                f"INSERT INTO {SHADOW_TABLE} (layer, tenant_id, namespace, entry_id, similarity,"
                " query, model, would_save_usd) VALUES (:l, :t, :n, :e, :s, :q, :m, :w)"
                " RETURNING id",
                {
                    "l": self.layer,
                    "t": scope.tenant_id,
                    "n": scope.namespace,
                    "e": hit.entry_id,
                    "s": similarity,
                    "q": query.text,
                    "m": hit.model,
                    "w": saved,
                },
            )
            pending = _Pending(hit.entry_id, similarity, hit.answer, int(rows[0]["id"]))
            return _Decision(None, pending, pkey)
        if not serve:
            if not self._explores(similarity):
                return _Decision(None)
            explore = _Pending(hit.entry_id, similarity, hit.answer)
            return _Decision(None, explore, pkey)
        return _Decision(hit)

    def _touch(self, entry_id: int) -> None:
        """Count a hit and mark the entry recently used, batched off the caller's path.

        Hits are written at most every ``_TOUCH_DELAY`` seconds, in one UPDATE from a timer
        thread, so that a burst of lookups never competes with its own bookkeeping (a write
        per lookup, run in another thread, cost each lookup about half a millisecond in GIL
        and database contention). A write flushes the pending touches first, in its own
        transaction, so eviction always sees them.
        """
        with self._pending_lock:
            self._touched[entry_id] = self._touched.get(entry_id, 0) + 1
            if self._touch_scheduled:
                return
            self._touch_scheduled = True
        timer = threading.Timer(_TOUCH_DELAY, self.flush)
        timer.daemon = True
        timer.start()

    def _take_touches(self) -> dict[int, int]:
        with self._pending_lock:
            touched, self._touched = self._touched, {}
            self._touch_scheduled = False
        return touched

    def flush(self) -> None:
        """Write the pending hit counts and recency now; returns once no write is in flight.

        Hits are batched off the lookup path; call this before the store goes away.
        """
        with self._flush_lock:  # a timer's flush in progress finishes first
            touched = self._take_touches()
            if not touched:
                return

            def plan() -> Plan[None]:
                yield _touch_sql(touched)
                return None

            try:
                run_sync(self._engines.engine, plan(), self.write_timeout)
            except (SQLAlchemyError, OSError) as exc:
                self._fail_open("touch", exc)

    def _price(self, hit: CacheHit) -> float | None:
        if not hit.model:
            return None
        prices = getattr(self.ledger, "prices", None)
        if prices is None:
            from graphthrift.ledger.prices import default_price_book

            prices = default_price_book()
        try:
            cost = prices.cost(hit.model, hit.input_tokens, hit.output_tokens)
        except Exception:
            return None
        return None if cost is None else float(cost)

    def _finish_lookup(
        self, decision: _Decision, feature: str | None, node: str | None
    ) -> CacheHit | None:
        if decision.pending is not None:
            with self._pending_lock:
                self._pending[decision.pending_key] = decision.pending
                self._pending.move_to_end(decision.pending_key)
                while len(self._pending) > _PENDING_MAX:
                    self._pending.popitem(last=False)
        hit = decision.hit
        if hit is None:
            diagnostics.count(f"cache_{self.layer}_miss")
            return None
        diagnostics.count(f"cache_{self.layer}_hit")
        self._touch(hit.entry_id)
        if self.ledger is not None:
            try:
                self.ledger.record(
                    LedgerRecord(
                        kind="cache_hit",
                        layer=self.layer,
                        model=hit.model,
                        input_tokens=max(0, hit.input_tokens),
                        output_tokens=max(0, hit.output_tokens),
                        tenant_id=hit.tenant_id or None,
                        feature=feature,
                        node=node,
                        cost_usd=0.0,
                        usage_source="estimated",
                        extra={
                            "namespace": hit.namespace,
                            "entry_id": hit.entry_id,
                            "similarity": round(hit.similarity, 6),
                        },
                    )
                )
            except Exception as exc:  # the ledger must never break a served hit
                diagnostics.count("cache_ledger_failure", "graphthrift: cache ledger: %r", exc)
        return hit

    def _fail_open(self, operation: str, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError) or "statement timeout" in str(exc):
            diagnostics.count(
                "cache_timeout",
                "graphthrift: cache %s timed out after %.3fs; treated as a miss",
                operation,
                self.timeout,
            )
        diagnostics.count(
            f"cache_{operation}_failure",
            "graphthrift: cache %s failed open (%s: %s)",
            operation,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )

    def _key(self, query: Any, context: Any) -> CacheQuery | None:
        try:
            key = self.key_fn(query, context)
        except ValueError as exc:
            diagnostics.count("cache_unkeyable", "graphthrift: cache skipped: %s", exc)
            return None
        if key is not None and (needs_repair(key.text) or needs_repair(key.context)):
            key = replace(
                key,
                text=clean_text(key.text, "cache query"),
                context=clean_text(key.context, "cache context"),
            )
        return key

    # -- writes ------------------------------------------------------------------------------

    def _should_store(self, tool_calls: bool, structured: bool) -> bool:
        if (tool_calls or structured) and not self.cache_tool_calls:
            diagnostics.count("cache_skip_tool_calls")
            return False
        return True

    def _update_plan(
        self,
        scope: CacheScope,
        query: CacheQuery,
        answer: str,
        vector: str | None,
        dim: int | None,
        payload: Any,
        evidence_ids: Sequence[str],
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        judged: tuple[_Pending, bool] | None,
    ) -> Plan[int]:
        touched = self._take_touches()
        if touched:  # recency first, so that this write's eviction sees recent hits
            yield _touch_sql(touched)
        ttl = self._ttl_for(scope.namespace)
        expires = datetime.now(UTC) + timedelta(seconds=ttl) if ttl is not None else None
        params: dict[str, Any] = {f"s_{k}": getattr(scope, k) for k in _SCOPE_FIELDS}
        params.update(
            layer=self.layer,
            em=self.embedding_model,
            ctx=query.context,
            kh=key_hash(self.layer, scope, self.embedding_model, query),
            q=query.text,
            nq=query.normalized,
            a=answer,
            p=None if payload is None else json.dumps(payload, default=str),
            ev=list(evidence_ids),
            m=model,
            it=_tokens(input_tokens),
            ot=_tokens(output_tokens),
            dim=dim,
            v=vector,
            exp=expires,
        )
        rows = yield Sql(
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
            params,
        )
        entry_id = int(rows[0]["id"])
        if judged is not None:
            pending, correct = judged
            if pending.shadow_id is not None:
                yield Sql(
                    f"UPDATE {SHADOW_TABLE} SET correct = :ok WHERE id = :id",
                    {"ok": correct, "id": pending.shadow_id},
                    fetch=False,
                )
            if pending.entry_id != entry_id:
                yield _observation_sql(pending.entry_id, pending.similarity, correct)
        where = "tenant_id = :t AND namespace = :n AND layer = :l"
        scope_params = {"t": scope.tenant_id, "n": scope.namespace, "l": self.layer}
        yield Sql(
            f"DELETE FROM {ENTRIES_TABLE} WHERE {where} AND expires_at <= now()",
            scope_params,
            fetch=False,
        )
        if self.max_entries is not None:
            yield Sql(
                f"DELETE FROM {ENTRIES_TABLE} WHERE id IN (SELECT id FROM {ENTRIES_TABLE}"
                f" WHERE {where} ORDER BY last_used_at DESC, id DESC OFFSET :cap)",
                {**scope_params, "cap": self.max_entries},
                fetch=False,
            )
        return entry_id

    def _judge(self, pkey: str, answer: str) -> tuple[_Pending, bool] | None:
        with self._pending_lock:
            pending = self._pending.pop(pkey, None)
        if pending is None:
            return None
        try:
            correct = bool(self.verify(pending.cached_answer, answer))
        except Exception as exc:
            diagnostics.count("cache_verify_failure", "graphthrift: cache verify: %r", exc)
            return None
        self._learn(pending.similarity, correct)
        return pending, correct

    def _learn(self, similarity: float, correct: bool) -> None:
        return None

    # -- feedback, clearing, reports -----------------------------------------------------------

    def _feedback_plan(self, hit: CacheHit | str, correct: bool) -> Plan[None]:
        layer, entry_id, similarity = _parse_hit(hit)
        if layer != self.layer:
            raise ValueError(
                f"feedback for a {layer} hit given to the {self.layer} cache: call feedback on"
                " the cache that served the hit"
            )
        if self.layer == "exact" and not correct:
            # an exact hit is wrong only if the stored answer is: never serve it again
            diagnostics.count("cache_feedback_evict")
            yield Sql(f"DELETE FROM {ENTRIES_TABLE} WHERE id = :id", {"id": entry_id}, fetch=False)
            return None
        self._learn(similarity, correct)
        yield _observation_sql(entry_id, similarity, correct)
        return None

    def feedback(self, hit: CacheHit | str, correct: bool) -> None:
        """Record whether a served hit was right.

        - Semantic layer: the observation is kept with the entry; adaptive policies learn
          from it (the entry's own threshold, and the shared prior).
        - Exact layer: the question matched word for word, so a wrong hit means a wrong
          stored answer; ``correct=False`` deletes the entry (it is never served again,
          counted as ``cache_feedback_evict``); ``correct=True`` is kept with the entry.

        Raises ``ValueError`` for a hit id that is not one, or that another layer served.
        Fails open: if the database is down the observation is dropped and counted.
        """
        try:
            run_sync(self._engines.engine, self._feedback_plan(hit, correct), self.write_timeout)
        except (SQLAlchemyError, OSError) as exc:
            self._fail_open("feedback", exc)

    async def afeedback(self, hit: CacheHit | str, correct: bool) -> None:
        """Async twin of ``feedback``."""
        try:
            await run_async(
                self._engines.async_engine, self._feedback_plan(hit, correct), self.write_timeout
            )
        except (SQLAlchemyError, OSError) as exc:
            self._fail_open("feedback", exc)

    def _clear_plan(self, scope: CacheScope, all_scopes: bool) -> Plan[int]:
        if all_scopes:
            rows = yield Sql(
                f"WITH d AS (DELETE FROM {ENTRIES_TABLE} WHERE layer = :l AND tenant_id = :t"
                " AND namespace = :n RETURNING 1) SELECT count(*) AS n FROM d",
                {"l": self.layer, "t": scope.tenant_id, "n": scope.namespace},
            )
        else:
            clause, params = self._filters(scope, CacheQuery(""))
            clause = clause.replace(" AND context_hash = :s_context_hash", "")
            rows = yield Sql(
                f"WITH d AS (DELETE FROM {ENTRIES_TABLE} WHERE layer = :l AND {clause}"
                " RETURNING 1) SELECT count(*) AS n FROM d",
                {**params, "l": self.layer},
            )
        return int(rows[0]["n"])

    def clear(self, *, all_scopes: bool = True, **scope: Any) -> int:
        """Delete this layer's entries of one tenant's namespace; returns how many.

        With ``all_scopes=False`` only the entries matching every scope field and version are
        deleted. Raises ``CacheUnavailable`` if the database is down (clearing must not
        silently fail).
        """
        try:
            return run_sync(
                self._engines.engine,
                self._clear_plan(self._scope(scope), all_scopes),
                self.write_timeout,
            )
        except (SQLAlchemyError, OSError) as exc:
            raise CacheUnavailable("clear", str(exc).splitlines()[0]) from exc

    async def aclear(self, *, all_scopes: bool = True, **scope: Any) -> int:
        """Async twin of ``clear``."""
        try:
            return await run_async(
                self._engines.async_engine,
                self._clear_plan(self._scope(scope), all_scopes),
                self.write_timeout,
            )
        except (SQLAlchemyError, OSError) as exc:
            raise CacheUnavailable("clear", str(exc).splitlines()[0]) from exc

    def shadow_report(self, **scope: Any) -> dict[str, Any]:
        """What shadow mode saw for one tenant's namespace.

        Returns ``would_hit`` (logged would-be hits), ``judged`` (those whose fresh answer was
        then stored), ``precision`` (right ÷ judged, None before any), ``would_save_usd``.
        """
        resolved = self._scope(scope)

        def plan() -> Plan[dict[str, Any]]:
            rows = yield Sql(
                "SELECT count(*) AS would_hit, count(correct) AS judged,"
                " count(*) FILTER (WHERE correct) AS right_hits,"
                " coalesce(sum(would_save_usd), 0) AS would_save_usd"
                f" FROM {SHADOW_TABLE} WHERE layer = :l AND tenant_id = :t AND namespace = :n",
                {"l": self.layer, "t": resolved.tenant_id, "n": resolved.namespace},
            )
            row = rows[0]
            judged = int(row["judged"])
            return {
                "would_hit": int(row["would_hit"]),
                "judged": judged,
                "precision": (int(row["right_hits"]) / judged) if judged else None,
                "would_save_usd": float(row["would_save_usd"]),
            }

        try:
            return run_sync(self._engines.engine, plan(), self.write_timeout)
        except (SQLAlchemyError, OSError) as exc:
            raise CacheUnavailable("shadow_report", str(exc).splitlines()[0]) from exc

    def purge_expired(self) -> int:
        """Delete every expired entry of every tenant (writes also purge their own scope)."""

        def plan() -> Plan[int]:
            rows = yield Sql(
                f"WITH d AS (DELETE FROM {ENTRIES_TABLE} WHERE expires_at <= now() RETURNING 1)"
                " SELECT count(*) AS n FROM d"
            )
            return int(rows[0]["n"])

        return run_sync(self._engines.engine, plan(), self.write_timeout)


def _touch_sql(touched: Mapping[int, int]) -> Sql:
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


def _observation_sql(entry_id: int, similarity: float, correct: bool) -> Sql:
    return Sql(
        f"UPDATE {ENTRIES_TABLE} SET"
        f" obs_sim = (coalesce(obs_sim, '{{}}') || CAST(:s AS double precision))"
        f"[greatest(1, coalesce(array_length(obs_sim, 1), 0) + 2 - {_MAX_OBSERVATIONS}):],"
        f" obs_ok = (coalesce(obs_ok, '{{}}') || CAST(:ok AS boolean))"
        f"[greatest(1, coalesce(array_length(obs_ok, 1), 0) + 2 - {_MAX_OBSERVATIONS}):]"
        " WHERE id = :id",
        {"s": float(similarity), "ok": bool(correct), "id": int(entry_id)},
        fetch=False,
    )


def _parse_hit(hit: CacheHit | str) -> tuple[str, int, float]:
    if isinstance(hit, CacheHit):
        return hit.layer, hit.entry_id, hit.similarity
    try:
        layer, entry, similarity = hit.split(":")
        if layer not in ("exact", "semantic"):
            raise ValueError(layer)
        return layer, int(entry), float(similarity)
    except ValueError:
        raise ValueError(f"not a cache hit id: {hit!r} (use CacheHit.hit_id)") from None


def _tokens(value: Any) -> int:
    """A token count as stored: bad numbers (NaN, inf, text, negative) become 0, counted."""
    return plausible_tokens("cache token count", value, fallback="storing 0") or 0


def _apply_context(query: CacheQuery, context: Any) -> CacheQuery:
    if context is None:
        return query
    return default_key(query, context)


class ExactCache(_BaseCache):
    """Serves an answer when the same normalized question was answered in the same scope.

    The key is a SHA-256 of the tenant, scope, namespace, the three versions, the context
    fingerprint and the normalized question (NFC, case-folded, whitespace collapsed,
    trailing punctuation dropped). Lookups take one indexed round trip.

    Args:
        store: the shared ``Store``.
        namespace, tenant_id, scope, prompt_version, model_version, corpus_version: defaults
            for every call; each call may override them by keyword.
        ttl: seconds an entry lives, or a mapping namespace -> seconds ("*" for the rest).
        max_entries: cap per tenant and namespace; the least recently used go first.
        timeout: seconds a lookup may wait on the database before failing open.
        ledger: a ``Ledger`` to book each served hit in (``kind="cache_hit"``).
        shadow: log would-be hits without serving them.
        verify: ``(cached_answer, fresh_answer) -> bool`` judging shadow hits.
        key_fn: maps the looked-up object to a ``CacheQuery`` (default: ``default_key``).
        cache_tool_calls: also store answers that were tool calls or structured output.

    Example:
        >>> cache = ExactCache(store, namespace="faq", tenant_id="acme")
        >>> cache.update("What are your opening hours?", "9 to 5.")
        >>> cache.lookup("what are your opening hours").answer
        '9 to 5.'
    """

    layer: Layer = "exact"

    def _candidate_sql(
        self, scope: CacheScope, query: CacheQuery, vector: str | None, kh: str
    ) -> list[Sql]:
        clause, params = self._filters(scope, query)
        params["kh"] = kh
        return [
            Sql(
                f"SELECT {_COLUMNS}, 1.0 AS similarity FROM {ENTRIES_TABLE}"
                f" WHERE layer = 'exact' AND key_hash = :kh AND {clause} LIMIT 1",
                params,
            )
        ]

    _dim: int | None = None  # the vector size; the exact layer stores none

    def _vector(self, text: str) -> str | None:
        """The query's vector literal for the SQL; the exact layer matches on the key alone."""
        return None

    async def _avector(self, text: str) -> str | None:
        """Async twin of ``_vector`` (the semantic layer embeds off the event loop)."""
        return None

    def _remaining(self, started: float) -> float:
        """What is left of the lookup deadline after the embedding took its share."""
        remaining = self.timeout - (time.perf_counter() - started)
        if remaining <= 0:
            raise TimeoutError(f"cache lookup: embedding alone took over {self.timeout:.3f}s")
        return remaining

    def lookup(
        self,
        query: Any,
        *,
        context: Any = None,
        feature: str | None = None,
        node: str | None = None,
        **scope: Any,
    ) -> CacheHit | None:
        """The cached answer to ``query`` in this scope, or None (also when the DB fails).

        ``query`` is a string or a list of messages; ``context`` joins the key fingerprint;
        ``feature`` and ``node`` tag the ledger record; scope fields override the defaults.
        """
        key = self._key(query, context)
        if key is None:
            return None
        started = time.perf_counter()
        try:  # embedding counts inside the lookup's deadline (issue 12, item 12)
            vector = self._vector(key.text)
            remaining = self._remaining(started)
            plan = self._lookup_plan(self._scope(scope, key), key, vector)
            decision = with_deadline(self._engines, plan, remaining)
        except BadScopeText as exc:
            diagnostics.count("cache_bad_scope", "graphthrift: cache skipped: %s", exc)
            return None
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._fail_open("lookup", exc)
            return None
        return self._finish_lookup(decision, feature, node)

    async def alookup(
        self,
        query: Any,
        *,
        context: Any = None,
        feature: str | None = None,
        node: str | None = None,
        **scope: Any,
    ) -> CacheHit | None:
        """Async twin of ``lookup``."""
        key = self._key(query, context)
        if key is None:
            return None
        started = time.perf_counter()
        try:
            vector = await self._avector(key.text)
            remaining = self._remaining(started)
            plan = self._lookup_plan(self._scope(scope, key), key, vector)
            decision = await awith_deadline(self._engines, plan, remaining)
        except BadScopeText as exc:
            diagnostics.count("cache_bad_scope", "graphthrift: cache skipped: %s", exc)
            return None
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._fail_open("lookup", exc)
            return None
        return self._finish_lookup(decision, feature, node)

    def _prepare_update(
        self,
        query: Any,
        context: Any,
        tool_calls: bool,
        structured: bool,
        source: Any,
        scope: Any,
    ) -> tuple[CacheScope, CacheQuery] | None:
        if not self._should_store(tool_calls, structured) or not self.storable(source):
            return None
        key = self._key(query, context)
        if key is None:
            return None
        try:
            return self._scope(scope, key), key
        except BadScopeText as exc:
            diagnostics.count("cache_bad_scope", "graphthrift: cache skipped: %s", exc)
            return None

    def storable(self, message: Any) -> bool:
        """Whether ``message`` (the answer as the model returned it) may be cached.

        Never: what graphthrift produced itself (budget refusals, degraded answers, cache
        hits), errors, refusals and content-filter stops (``graphthrift.provenance``).
        Each refusal is counted as ``cache_skip_<reason>``.
        """
        reason = unstorable(message)
        if reason is None:
            return True
        diagnostics.count(f"cache_skip_{reason.split(':')[0]}")
        logger.debug("graphthrift: cache store skipped: %s", reason)
        return False

    def update(
        self,
        query: Any,
        answer: str,
        *,
        context: Any = None,
        payload: Any = None,
        evidence_ids: Sequence[str] = (),
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        tool_calls: bool = False,
        structured: bool = False,
        source: Any = None,
        **scope: Any,
    ) -> int | None:
        """Store ``answer`` for ``query``; returns the entry id, or None if skipped or failed.

        ``model``, ``input_tokens`` and ``output_tokens`` describe the call a hit will avoid
        (they price the ledger's ``saved_usd``). Answers that were ``tool_calls`` or
        ``structured`` output are skipped unless ``cache_tool_calls=True``. ``source`` is
        the answer's message as the model returned it: graphthrift's own messages, errors
        and refusals are never stored (see ``storable``).
        """
        prepared = self._prepare_update(query, context, tool_calls, structured, source, scope)
        if prepared is None:
            return None
        resolved, key = prepared
        answer = clean_text(answer, "cache answer") if needs_repair(answer) else answer
        vector = self._vector(key.text)
        judged = self._judge(key_hash(self.layer, resolved, self.embedding_model, key), answer)
        plan = self._update_plan(
            resolved, key, answer, vector, self._dim, payload, evidence_ids, model,
            input_tokens, output_tokens, judged,
        )  # fmt: skip
        try:
            return run_sync(self._engines.engine, plan, self.write_timeout)
        except (SQLAlchemyError, OSError) as exc:
            self._fail_open("store", exc)
            return None

    async def aupdate(
        self,
        query: Any,
        answer: str,
        *,
        context: Any = None,
        payload: Any = None,
        evidence_ids: Sequence[str] = (),
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        tool_calls: bool = False,
        structured: bool = False,
        source: Any = None,
        **scope: Any,
    ) -> int | None:
        """Async twin of ``update``."""
        prepared = self._prepare_update(query, context, tool_calls, structured, source, scope)
        if prepared is None:
            return None
        resolved, key = prepared
        answer = clean_text(answer, "cache answer") if needs_repair(answer) else answer
        vector = await self._avector(key.text)
        judged = self._judge(key_hash(self.layer, resolved, self.embedding_model, key), answer)
        plan = self._update_plan(
            resolved, key, answer, vector, self._dim, payload, evidence_ids, model,
            input_tokens, output_tokens, judged,
        )  # fmt: skip
        try:
            return await run_async(self._engines.async_engine, plan, self.write_timeout)
        except (SQLAlchemyError, OSError) as exc:
            self._fail_open("store", exc)
            return None

    def as_langchain_cache(self, *, single_tenant: bool = False, **scope: Any) -> Any:
        """This cache as a ``langchain_core.caches.BaseCache`` (``graphthrift.langchain.cache``).

        It serves only calls whose tenant is known from the run (``CostTagger`` or
        ``graphthrift.scoped``), unless ``single_tenant=True``: LangChain's cache interface
        never sees the run's config (issue 12, item 2).
        """
        from graphthrift.langchain.cache import GraphthriftLangChainCache

        return GraphthriftLangChainCache(self, single_tenant=single_tenant, **scope)


class SemanticCache(ExactCache):
    """Serves the answer of the nearest earlier question when it is similar enough.

    Search is a pgvector HNSW (cosine) index scan with the scope filters applied inside the
    scan (``hnsw.iterative_scan = strict_order``), falling back to an exact filtered scan
    when the index finds nothing; ``hnsw.ef_search`` is ``ef_search`` (default 40).

    Args:
        store: the shared ``Store``.
        embedder: an ``Embedder``, a LangChain ``Embeddings``, a LlamaIndex embedding or a
            callable ``list[str] -> vectors``; default MiniLM int8 on onnxruntime.
        threshold: cosine similarity to serve at, for ``policy="static"`` (default 0.92, env
            ``GRAPHTHRIFT_CACHE_THRESHOLD``; tune it with ``graphthrift cache tune``).
        policy: ``"static"``, ``"adaptive"`` or a ``ThresholdPolicy`` instance.
        max_error: δ for ``policy="adaptive"``.
        lexical_guard: reject a hit whose question differs from the new one in numbers,
            identifiers, dates, negation or named entities (default True; False turns it
            off; or a callable ``(cached, query) -> reason | None``). See
            ``graphthrift.cache.guard``.
        All other arguments are those of ``ExactCache``.

    Example:
        >>> cache = SemanticCache(store, policy="adaptive", max_error=0.02, tenant_id="acme")
        >>> hit = cache.lookup("How do I close my account?")
        >>> if hit is None:
        ...     cache.update("How do I close my account?", answer, model="gpt-4o-mini")
    """

    layer: Layer = "semantic"

    def __init__(
        self,
        store: Store,
        embedder: Any = None,
        *,
        threshold: float | None = None,
        policy: Literal["static", "adaptive"] | ThresholdPolicy = "static",
        max_error: float = 0.05,
        lexical_guard: bool | Guard = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(store, **kwargs)
        if lexical_guard is True:
            self.lexical_guard: Guard | None = lexical_conflict
        elif lexical_guard is False or lexical_guard is None:
            self.lexical_guard = None
        elif callable(lexical_guard):
            self.lexical_guard = lexical_guard
        else:
            raise TypeError(
                "lexical_guard must be True, False or a callable (cached, query) -> reason | None,"
                f" got {type(lexical_guard).__name__}"
            )
        self.embedder: Embedder = default_embedder() if embedder is None else as_embedder(embedder)
        self.threshold = _env_float("GRAPHTHRIFT_CACHE_THRESHOLD", threshold, 0.92)
        if isinstance(policy, str):
            if policy == "static":
                self.policy: ThresholdPolicy = StaticPolicy(self.threshold)
            elif policy == "adaptive":
                self.policy = AdaptivePolicy(max_error)
            else:
                raise ValueError(f"policy must be 'static', 'adaptive' or a policy, got {policy!r}")
        else:
            self.policy = policy
        self._dim: int | None = None
        self._indexed: set[int] = {384}

    @property
    def embedding_model(self) -> str:
        return self.embedder.model_id

    def _guard_allows(self, query: str, cached: str) -> bool:
        if self.lexical_guard is None:
            return True
        reason = self.lexical_guard(cached, query)
        if reason is None:
            return True
        diagnostics.count("cache_guard_reject")
        diagnostics.count(f"cache_guard_reject_{reason}")
        return False

    def _policy_serves(self, similarity: float, row: Mapping[str, Any]) -> bool:
        return self.policy.serve(similarity, row.get("obs_sim") or (), row.get("obs_ok") or ())

    def _learn(self, similarity: float, correct: bool) -> None:
        self.policy.observe(similarity, correct)

    def _explores(self, similarity: float) -> bool:
        policy = self.policy
        return isinstance(policy, AdaptivePolicy) and similarity >= policy.min_similarity

    def _candidate_sql(
        self, scope: CacheScope, query: CacheQuery, vector: str | None, kh: str
    ) -> list[Sql]:
        assert vector is not None and self._dim is not None
        dim = self._dim
        clause, params = self._filters(scope, query)
        params["v"] = vector
        distance = f"(embedding::vector({dim})) <=> CAST(:v AS vector({dim}))"
        select = f"SELECT {_COLUMNS}, 1 - ({distance}) AS similarity"
        where = f"WHERE layer = 'semantic' AND dim = {dim} AND {clause}"
        return [
            Sql(f"{select} FROM {ENTRIES_TABLE} {where} ORDER BY {distance} LIMIT 1", params),
            # exact fallback: the filtered rows first (materialized), then the nearest
            Sql(
                f"WITH c AS MATERIALIZED (SELECT * FROM {ENTRIES_TABLE} {where})"
                f" {select} FROM c ORDER BY {distance} LIMIT 1",
                params,
            ),
        ]

    def _vector(self, text: str) -> str | None:
        vector = self.embedder.embed([text])[0]
        self._note_dim(len(vector))
        return _vector_literal(vector)

    async def _avector(self, text: str) -> str | None:
        vector = (await self.embedder.aembed([text]))[0]
        self._note_dim(len(vector))
        return _vector_literal(vector)

    def _note_dim(self, dim: int) -> None:
        if self._dim == dim:
            return
        self._dim = dim
        if dim not in self._indexed:
            try:
                with self.store.connect() as conn:
                    from sqlalchemy import text

                    conn.execute(text("SELECT pg_advisory_xact_lock(0x67745F63)"))
                    conn.execute(text(hnsw_index_sql(dim)))
                self._indexed.add(dim)
            except Exception as exc:
                diagnostics.count(
                    "cache_index_failure", "graphthrift: HNSW index for dim %d: %r", dim, exc
                )

    def update_many(
        self,
        queries: Sequence[str],
        answers: Sequence[str],
        *,
        model: str | None = None,
        **scope: Any,
    ) -> list[int | None]:
        """Store many string questions, embedded in batches (one model call per batch)."""
        if len(queries) != len(answers):
            raise ValueError(f"got {len(queries)} queries but {len(answers)} answers")
        keys = [self.key_fn(q, None) for q in queries]
        vectors = self.embedder.embed([k.text for k in keys]) if keys else np.empty((0, 0))
        if len(keys):
            self._note_dim(vectors.shape[1])
        resolved = self._scope(scope)
        ids: list[int | None] = []
        for key, answer, vector in zip(keys, answers, vectors, strict=True):
            plan = self._update_plan(
                resolved, key, answer, _vector_literal(vector), self._dim, None, (), model,
                0, 0, None,
            )  # fmt: skip
            try:
                ids.append(run_sync(self._engines.engine, plan, self.write_timeout))
            except (SQLAlchemyError, OSError) as exc:
                self._fail_open("store", exc)
                ids.append(None)
        return ids
