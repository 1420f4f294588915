"""``CachedQueryEngine``: a LlamaIndex query engine that answers from the cache first.

It wraps any query engine. A hit returns a ``Response`` with the cached text and the
stored evidence ids in ``metadata["graphthrift_cache"]`` (the source nodes are not
re-fetched); a miss queries the inner engine and stores its answer with the ids of the
nodes it cited. Set ``corpus_version`` when the index is rebuilt so old answers stop.

Scope: the tenant, user and versions set by an enclosing ``graphthrift.llamaindex.tags(...)``
block win over the engine's constructor scope, read by ``graphthrift.kernel`` as in every
adapter (issue 11, item 5): one engine serves many tenants without leaking. A hit's ledger
record carries those tags, and prices the avoided call at the engine's LLM with token counts
estimated by tiktoken from the question, the cited passages and the answer.
"""

from __future__ import annotations

from typing import Any, Unpack

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import QueryBundle

from graphthrift import diagnostics
from graphthrift.cache.exact import ExactCache, checked_cache
from graphthrift.cache.hit import CacheHit
from graphthrift.cache.scope import CacheScopeKwargs
from graphthrift.kernel import cache_request, hit_tags, model_name, run_tags
from graphthrift.llamaindex.instrumentation import current_tags
from graphthrift.provenance import own_marker, watch_degraded
from graphthrift.text.tokens import count_text

_UNNAMED = frozenset({"", "unknown"})
_NO_ANSWER = frozenset({"", "Empty Response", "None"})


def _engine_model(engine: Any) -> str | None:
    """The model name of the LLM a query engine answers with, if it says (its metadata's
    ``model_name``, else the LLM's own, read by ``graphthrift.kernel.model_name``)."""
    for holder in (engine, getattr(engine, "_response_synthesizer", None)):
        llm = getattr(holder, "_llm", None) or getattr(holder, "llm", None)
        for source in (getattr(llm, "metadata", None), llm):
            name = model_name(source) if source is not None else None
            if name is not None and name.strip().lower() not in _UNNAMED:
                return name
    return None


__all__ = ["CachedQueryEngine"]


class CachedQueryEngine(BaseQueryEngine):
    """Query engine wrapper: cache lookup, else the inner engine plus a cache update.

    Args:
        query_engine: the engine to answer misses (e.g. ``index.as_query_engine()``).
        cache: an ``ExactCache`` or ``SemanticCache``.
        model: the LLM the inner engine calls, for the ledger's savings on a hit (default:
            the inner engine's own LLM, when it names its model).
        **scope: default scope fields (tenant_id, corpus_version, ...); an enclosing
            ``graphthrift.llamaindex.tags(...)`` block overrides them per query.

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
        **scope: Unpack[CacheScopeKwargs],
    ) -> None:
        self.query_engine = query_engine
        self.cache = checked_cache(cache, scope)
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
        return Response(
            response=hit.answer, metadata={"graphthrift_cache": info, **own_marker("cache")}
        )

    def _scope(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(cache scope, ledger tags) of this query: ``tags()`` over the constructor's."""
        run = {"metadata": current_tags()}
        return cache_request(run, **self.scope), hit_tags(run_tags(run))

    def _store_args(self, question: str, response: Any) -> tuple[str, dict[str, Any]] | None:
        text = getattr(response, "response", None)
        if not isinstance(text, str) or text.strip() in _NO_ANSWER:
            # streaming responses, and LlamaIndex's "Empty Response" when nothing was
            # retrieved, are not answers to keep
            return None
        nodes = getattr(response, "source_nodes", None) or []
        evidence = [n.node.node_id for n in nodes]
        model = self.model or _engine_model(self.query_engine)
        passages = "\n".join(n.node.get_content() for n in nodes)
        return text, {
            "evidence_ids": evidence,
            "model": model,
            "input_tokens": count_text(f"{question}\n{passages}", model),
            "output_tokens": count_text(text, model),
            "source": response,
        }

    def _stored(
        self, question: str, response: Any, degraded: list[str]
    ) -> tuple[str, dict[str, Any]] | None:
        """What to store, or None: never an answer a budget degraded inside the engine."""
        if degraded:
            diagnostics.count("cache_skip_own")
            return None
        return self._store_args(question, response)

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        scope, tags = self._scope()
        hit = self.cache.lookup(query_bundle.query_str, **scope, **tags)
        if hit is not None:
            return self._from_hit(hit)
        with watch_degraded() as degraded:
            response = self.query_engine.query(query_bundle)
        stored = self._stored(query_bundle.query_str, response, degraded)
        if stored is not None:
            self.cache.update(query_bundle.query_str, stored[0], **stored[1], **scope)
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        scope, tags = self._scope()
        hit = await self.cache.alookup(query_bundle.query_str, **scope, **tags)
        if hit is not None:
            return self._from_hit(hit)
        with watch_degraded() as degraded:
            response = await self.query_engine.aquery(query_bundle)
        stored = self._stored(query_bundle.query_str, response, degraded)
        if stored is not None:
            await self.cache.aupdate(query_bundle.query_str, stored[0], **stored[1], **scope)
        return response
