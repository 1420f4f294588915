"""The exact layer: an answer is served when the same normalized question was answered in
the same scope. ``ExactCache`` is also the public face of both layers: ``lookup``,
``update`` and their async twins live here, and ``SemanticCache`` extends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.cache.base import CacheLayer
from graphthrift.cache.db import Plan, Sql, awith_deadline, run_async, run_sync, with_deadline
from graphthrift.cache.hit import CacheHit, Layer, parse_hit_id
from graphthrift.cache.keys import CacheQuery, CacheScope, key_hash
from graphthrift.cache.schema import ENTRIES_TABLE
from graphthrift.cache.scope import CacheScopeKwargs, check_scope_keywords
from graphthrift.cache.statements import (
    ENTRY_COLUMNS,
    clear_sql,
    delete_entry_sql,
    observation_sql,
    purge_sql,
    shadow_report_sql,
)
from graphthrift.errors import BadScopeText, CacheArgumentError, CacheUnavailable
from graphthrift.provenance import unstorable
from graphthrift.text.repair import clean_text, needs_repair

__all__ = ["ExactCache", "checked_cache"]

logger = logging.getLogger("graphthrift.cache")


class ExactCache(CacheLayer):
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
                f"SELECT {ENTRY_COLUMNS}, 1.0 AS similarity FROM {ENTRIES_TABLE}"
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

    _cold = False  # the semantic layer's embedder has not been loaded yet

    def _warm(self) -> None:
        """Load what the lookup embeds with (the exact layer embeds nothing)."""

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
        thread_id: str | None = None,
        run_id: str | None = None,
        **scope: Unpack[CacheScopeKwargs],
    ) -> CacheHit | None:
        """The cached answer to ``query`` in this scope, or None (also when the DB fails).

        ``query`` is a string or a list of messages; ``context`` joins the key fingerprint;
        ``feature``, ``node``, ``thread_id`` and ``run_id`` tag the ledger record (so a
        report by thread or run shows its savings); scope fields override the defaults.
        """
        check_scope_keywords(scope)
        key = self._key(query, context)
        if key is None:
            return None
        try:  # embedding counts inside the lookup's deadline (issue 12, item 12) ...
            if self._cold:  # ... but not the model's one-time load, which is startup
                self._warm()
            started = time.perf_counter()
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
        return self._finish_lookup(decision, feature, node, thread_id=thread_id, run_id=run_id)

    async def alookup(
        self,
        query: Any,
        *,
        context: Any = None,
        feature: str | None = None,
        node: str | None = None,
        thread_id: str | None = None,
        run_id: str | None = None,
        **scope: Unpack[CacheScopeKwargs],
    ) -> CacheHit | None:
        """Async twin of ``lookup``."""
        check_scope_keywords(scope)
        key = self._key(query, context)
        if key is None:
            return None
        try:
            if self._cold:  # the model's one-time load, off the event loop
                await asyncio.to_thread(self._warm)
            started = time.perf_counter()
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
        return self._finish_lookup(decision, feature, node, thread_id=thread_id, run_id=run_id)

    def _prepare_update(
        self,
        query: Any,
        context: Any,
        tool_calls: bool,
        structured: bool,
        source: Any,
        scope: Mapping[str, object],
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
        **scope: Unpack[CacheScopeKwargs],
    ) -> int | None:
        """Store ``answer`` for ``query``; returns the entry id, or None if skipped or failed.

        ``model``, ``input_tokens`` and ``output_tokens`` describe the call a hit will avoid
        (they price the ledger's ``saved_usd``). Answers that were ``tool_calls`` or
        ``structured`` output are skipped unless ``cache_tool_calls=True``. ``source`` is
        the answer's message as the model returned it: graphthrift's own messages, errors
        and refusals are never stored (see ``storable``).
        """
        check_scope_keywords(scope)
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
        **scope: Unpack[CacheScopeKwargs],
    ) -> int | None:
        """Async twin of ``update``."""
        check_scope_keywords(scope)
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

    # -- feedback, clearing, reports -----------------------------------------------------------

    def _feedback_plan(self, hit: CacheHit | str, correct: bool) -> Plan[None]:
        layer, entry_id, similarity = parse_hit_id(hit)
        if layer != self.layer:
            raise ValueError(
                f"feedback for a {layer} hit given to the {self.layer} cache: call feedback on"
                " the cache that served the hit"
            )
        if self.layer == "exact" and not correct:
            # an exact hit is wrong only if the stored answer is: never serve it again
            diagnostics.count("cache_feedback_evict")
            yield delete_entry_sql(entry_id)
            return None
        self._learn(similarity, correct)
        yield observation_sql(entry_id, similarity, correct)
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
        rows = yield clear_sql(self.layer, scope, self.embedding_model, all_scopes)
        return int(rows[0]["n"])

    def clear(self, *, all_scopes: bool = True, **scope: Unpack[CacheScopeKwargs]) -> int:
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

    async def aclear(self, *, all_scopes: bool = True, **scope: Unpack[CacheScopeKwargs]) -> int:
        """Async twin of ``clear``."""
        try:
            return await run_async(
                self._engines.async_engine,
                self._clear_plan(self._scope(scope), all_scopes),
                self.write_timeout,
            )
        except (SQLAlchemyError, OSError) as exc:
            raise CacheUnavailable("clear", str(exc).splitlines()[0]) from exc

    def shadow_report(self, **scope: Unpack[CacheScopeKwargs]) -> dict[str, Any]:
        """What shadow mode saw for one tenant's namespace.

        Returns ``would_hit`` (logged would-be hits), ``judged`` (those whose fresh answer was
        then stored), ``precision`` (right ÷ judged, None before any), ``would_save_usd``.
        """
        resolved = self._scope(scope)

        def plan() -> Plan[dict[str, Any]]:
            rows = yield shadow_report_sql(self.layer, resolved)
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
            rows = yield purge_sql()
            return int(rows[0]["n"])

        return run_sync(self._engines.engine, plan(), self.write_timeout)


def checked_cache(cache: object, scope: Mapping[str, object]) -> ExactCache:
    """``cache``, checked the way every cache adapter checks what it is built with.

    Raises:
        CacheArgumentError: ``cache`` is neither an ``ExactCache`` nor a ``SemanticCache``.
        UnknownScopeKey: a ``scope`` keyword is not one (``tenant=`` for ``tenant_id=``).
    """
    if not isinstance(cache, ExactCache):
        raise CacheArgumentError(
            "cache", cache, f"expected an ExactCache or SemanticCache, got {type(cache).__name__}"
        )
    check_scope_keywords(scope)
    return cache
