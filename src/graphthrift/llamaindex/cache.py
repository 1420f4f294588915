"""``CachedQueryEngine``: a LlamaIndex query engine that answers from the cache first.

It wraps any query engine. A hit returns a ``Response`` with the cached text and the
stored evidence ids in ``metadata["graphthrift_cache"]`` (the source nodes are not
re-fetched); a miss queries the inner engine and stores its answer with the ids of the
nodes it cited. Set ``corpus_version`` when the index is rebuilt so old answers stop.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import QueryBundle

from graphthrift.cache import CacheHit, ExactCache

__all__ = ["CachedQueryEngine"]


class CachedQueryEngine(BaseQueryEngine):
    """Query engine wrapper: cache lookup, else the inner engine plus a cache update.

    Args:
        query_engine: the engine to answer misses (e.g. ``index.as_query_engine()``).
        cache: an ``ExactCache`` or ``SemanticCache``.
        model: the LLM the inner engine calls, for the ledger's savings on a hit.
        **scope: scope fields (tenant_id, corpus_version, ...) for every query.

    Example:
        >>> engine = CachedQueryEngine(index.as_query_engine(), cache, corpus_version="v3")
        >>> engine.query("What is the refund window?")
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        cache: ExactCache,
        *,
        model: str | None = None,
        callback_manager: CallbackManager | None = None,
        **scope: Any,
    ) -> None:
        if not isinstance(cache, ExactCache):
            raise TypeError(f"expected an ExactCache or SemanticCache, got {type(cache).__name__}")
        self.query_engine = query_engine
        self.cache = cache
        self.model = model
        self.scope = scope
        super().__init__(callback_manager or query_engine.callback_manager)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self.query_engine}

    @staticmethod
    def _from_hit(hit: CacheHit) -> Response:
        info = {
            "layer": hit.layer,
            "hit_id": hit.hit_id,
            "similarity": hit.similarity,
            "evidence_ids": list(hit.evidence_ids),
        }
        return Response(response=hit.answer, metadata={"graphthrift_cache": info})

    def _store_args(self, response: Any) -> tuple[str, dict[str, Any]] | None:
        text = getattr(response, "response", None)
        if not isinstance(text, str):
            return None  # streaming or empty responses are not stored
        nodes = getattr(response, "source_nodes", None) or []
        evidence = [n.node.node_id for n in nodes]
        return text, {"evidence_ids": evidence, "model": self.model, **self.scope}

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        hit = self.cache.lookup(query_bundle.query_str, **self.scope)
        if hit is not None:
            return self._from_hit(hit)
        response = self.query_engine.query(query_bundle)
        stored = self._store_args(response)
        if stored is not None:
            self.cache.update(query_bundle.query_str, stored[0], **stored[1])
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        hit = await self.cache.alookup(query_bundle.query_str, **self.scope)
        if hit is not None:
            return self._from_hit(hit)
        response = await self.query_engine.aquery(query_bundle)
        stored = self._store_args(response)
        if stored is not None:
            await self.cache.aupdate(query_bundle.query_str, stored[0], **stored[1])
        return response
