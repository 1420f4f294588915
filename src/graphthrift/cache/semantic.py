"""The semantic layer: ``SemanticCache`` also serves paraphrases, by embedding search.

It embeds the question and searches a pgvector HNSW index (cosine), filtered by the same
indexed columns as the exact layer, and serves the nearest entry when the lexical guard
(``graphthrift.cache.guard``) and the policy (``graphthrift.cache.policy``) accept it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Unpack

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.cache.db import Sql, run_sync
from graphthrift.cache.exact import ExactCache
from graphthrift.cache.guard import Guard, lexical_conflict
from graphthrift.cache.hit import Layer
from graphthrift.cache.keys import CacheQuery, CacheScope
from graphthrift.cache.policy import AdaptivePolicy, StaticPolicy, ThresholdPolicy
from graphthrift.cache.schema import ENTRIES_TABLE, hnsw_index_sql
from graphthrift.cache.scope import CacheScopeKwargs, check_scope_keywords
from graphthrift.cache.statements import ENTRY_COLUMNS, vector_literal
from graphthrift.config import setting
from graphthrift.embed.embedders import (
    Embedder,
    MiniLMEmbedder,
    as_embedder,
    default_embedder,
)
from graphthrift.embed.static import StaticEmbedder
from graphthrift.errors import CacheArgumentError, ConfigError
from graphthrift.store.postgres import Store

__all__ = ["SemanticCache"]


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
            raise CacheArgumentError(
                "lexical_guard",
                lexical_guard,
                "must be True, False or a callable (cached, query) -> reason | None",
            )
        self.embedder: Embedder = default_embedder() if embedder is None else as_embedder(embedder)
        self.threshold = setting("GRAPHTHRIFT_CACHE_THRESHOLD", threshold, 0.92)
        if isinstance(policy, str):
            if policy == "static":
                self.policy: ThresholdPolicy = StaticPolicy(self.threshold)
            elif policy == "adaptive":
                self.policy = AdaptivePolicy(max_error)
            else:
                raise ConfigError("policy", policy, "must be 'static', 'adaptive' or a policy")
        else:
            self.policy = policy
        self._dim: int | None = None
        self._cold = True
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
        select = f"SELECT {ENTRY_COLUMNS}, 1 - ({distance}) AS similarity"
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

    def _warm(self) -> None:
        # ours load lazily and say how to load now; a user's embedder is left as it is
        # (its own ``load`` may mean something else). A failed load fails open, once.
        self._cold = False
        if isinstance(self.embedder, MiniLMEmbedder | StaticEmbedder):
            try:
                self.embedder.load()
            except Exception as exc:
                self._fail_open("embedder_load", exc)

    def _vector(self, text: str) -> str | None:
        vector = self.embedder.embed([text])[0]
        self._note_dim(len(vector))
        return vector_literal(vector)

    async def _avector(self, text: str) -> str | None:
        vector = (await self.embedder.aembed([text]))[0]
        self._note_dim(len(vector))
        return vector_literal(vector)

    def _note_dim(self, dim: int) -> None:
        if self._dim == dim:
            return
        self._dim = dim
        if dim not in self._indexed:
            try:
                with self.store.connect() as conn:
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
        **scope: Unpack[CacheScopeKwargs],
    ) -> list[int | None]:
        """Store many string questions, embedded in batches (one model call per batch)."""
        check_scope_keywords(scope)
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
                resolved, key, answer, vector_literal(vector), self._dim, None, (), model,
                0, 0, None,
            )  # fmt: skip
            try:
                ids.append(run_sync(self._engines.engine, plan, self.write_timeout))
            except (SQLAlchemyError, OSError) as exc:
                self._fail_open("store", exc)
                ids.append(None)
        return ids
