"""What the exact and semantic layers share: settings, the lookup plan, writes, shadow mode.

``CacheLayer`` holds a layer's scope defaults, TTL, size cap, timeouts and ledger; it runs
one lookup plan (candidate SQL from the layer, the lexical guard and the policy, shadow
logging), books served hits, batches hit counts off the lookup path, writes entries with
their eviction, judges would-be hits once the fresh answer is known, and takes feedback.
``ExactCache`` (``graphthrift.cache.exact``) adds the public lookup and update methods, and
``SemanticCache`` (``graphthrift.cache.semantic``) the embedding search.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.cache.db import CacheEngines, Plan, Settings, Sql, run_sync
from graphthrift.cache.hit import CacheHit, Layer
from graphthrift.cache.keys import (
    CacheQuery,
    CacheScope,
    KeyFunction,
    default_key,
    key_hash,
    normalize_query,
)
from graphthrift.cache.scope import resolve_scope
from graphthrift.cache.statements import (
    evict_plan,
    observation_sql,
    scope_filter,
    scope_params,
    shadow_insert_sql,
    shadow_judged_sql,
    touch_sql,
    upsert_entry_sql,
)
from graphthrift.config import setting
from graphthrift.errors import CacheArgumentError, ConfigError
from graphthrift.ledger.records import LedgerRecord, plausible_tokens
from graphthrift.store.postgres import Store
from graphthrift.text.repair import clean_text, needs_repair

__all__ = ["CacheLayer", "Verify", "setting"]

Verify = Callable[[str, str], bool]
_PENDING_MAX = 10_000
_EF_SEARCH = 40
_TOUCH_DELAY = 1.0  # seconds between batched hit-count writes


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


def _default_verify(cached: str, fresh: str) -> bool:
    return normalize_query(cached) == normalize_query(fresh)


class CacheLayer:
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
            raise CacheArgumentError(
                "store", store, f"must be a graphthrift.Store, got {type(store).__name__}"
            )
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
                raise ConfigError("ttl", ns_ttl, "must be > 0 seconds or None")
        if max_entries is not None and max_entries < 1:
            raise ConfigError("max_entries", max_entries, "must be >= 1 or None")
        self.max_entries = max_entries
        self.timeout = setting("GRAPHTHRIFT_CACHE_TIMEOUT", timeout, 0.1)
        if self.timeout <= 0:
            raise ConfigError("timeout", self.timeout, "must be > 0 seconds")
        self.write_timeout = write_timeout
        self.ledger = ledger
        self.shadow = shadow
        self.verify: Verify = verify or _default_verify
        self.key_fn: Callable[[Any, Any], CacheQuery] = (
            (lambda q, ctx: _apply_context(key_fn(q), ctx)) if key_fn else default_key
        )
        self.cache_tool_calls = cache_tool_calls
        ef = int(setting("GRAPHTHRIFT_CACHE_EF_SEARCH", ef_search, _EF_SEARCH))
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
        """The request's scope (``graphthrift.cache.scope.resolve_scope``)."""
        return resolve_scope(self.defaults, overrides, key)

    def _ttl_for(self, namespace: str) -> float | None:
        if isinstance(self.ttl, Mapping):
            return self.ttl.get(namespace, self.ttl.get("*"))
        return self.ttl

    def _filters(self, scope: CacheScope, query: CacheQuery) -> tuple[str, dict[str, Any]]:
        return scope_filter(scope, self.embedding_model, query)

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
            rows = yield shadow_insert_sql(
                {
                    "l": self.layer,
                    "t": scope.tenant_id,
                    "n": scope.namespace,
                    "e": hit.entry_id,
                    "s": similarity,
                    "q": query.text,
                    "m": hit.model,
                    "w": saved,
                }
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
                yield touch_sql(touched)
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
        self,
        decision: _Decision,
        feature: str | None,
        node: str | None,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
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
                        thread_id=thread_id,
                        run_id=run_id,
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
            yield touch_sql(touched)
        ttl = self._ttl_for(scope.namespace)
        expires = datetime.now(UTC) + timedelta(seconds=ttl) if ttl is not None else None
        params = scope_params(scope)
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
        rows = yield upsert_entry_sql(params)
        entry_id = int(rows[0]["id"])
        if judged is not None:
            pending, correct = judged
            if pending.shadow_id is not None:
                yield shadow_judged_sql(pending.shadow_id, correct)
            if pending.entry_id != entry_id:
                yield observation_sql(pending.entry_id, pending.similarity, correct)
        yield from evict_plan(self.layer, scope, self.max_entries)
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


def _tokens(value: Any) -> int:
    """A token count as stored: bad numbers (NaN, inf, text, negative) become 0, counted."""
    return plausible_tokens("cache token count", value, fallback="storing 0") or 0


def _apply_context(query: CacheQuery, context: Any) -> CacheQuery:
    if context is None:
        return query
    return default_key(query, context)
