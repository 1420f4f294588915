"""``GraphthriftLangChainCache``: a ``langchain_core.caches.BaseCache`` over our caches.

Set it as a model's cache (``ChatOpenAI(cache=...)``) or globally (``set_llm_cache``).
LangChain keys its cache on the whole serialized prompt; we key on what users expect:

- the prompt is read back into messages and keyed by ``default_key`` (latest user message
  plus a fingerprint of the system prompt and the earlier turns), so an ``ExactCache``
  hits across conversations that ask the same thing, and a ``SemanticCache`` across
  paraphrases;
- ``llm_string`` (model name and parameters) becomes part of ``model_version``, so answers
  of one model or temperature are never served for another;
- generations are stored with LangChain's own serializer and come back equal, tool calls
  included; answers that were tool calls are not stored unless ``cache_tool_calls=True``;
  graphthrift's own messages, errors and refusals are never stored.

Scope (issue 12, item 2). ``BaseCache.lookup(prompt, llm_string)`` never sees the run's
config, so the tenant and user come from the context the model runs in, read by
``graphthrift.kernel``: the tags ``CostTagger`` binds for each model call (from the run's
metadata), a ``with graphthrift.scoped(tenant_id=..., user_id=...)`` block, or the
metadata of the LangGraph node or chain the model is called in. When none of them names a
tenant the cache serves nothing and stores nothing (counted as ``cache_unscoped``), unless
it was built single-tenant: ``as_langchain_cache(cache, single_tenant=True)`` then uses the
cache's own defaults.

Savings are booked once (issue 12, item 3): a served hit writes its ``cache_hit`` ledger
record, and its generations are marked (``response_metadata["graphthrift_cache"]``) so
that ``CostTagger`` does not also book LangChain's replayed callbacks as a model call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumps, loads
from langchain_core.outputs import ChatGeneration, Generation

from graphthrift import diagnostics
from graphthrift.cache.exact import ExactCache, checked_cache
from graphthrift.cache.hit import CacheHit
from graphthrift.cache.keys import fingerprint
from graphthrift.cache.scope import CacheScopeKwargs
from graphthrift.kernel import (
    answered_by,
    cache_request,
    current_run_tags,
    hit_tags,
    read_usage,
    run_config,
    run_tags,
)
from graphthrift.provenance import own_marker, unstorable

__all__ = ["CACHE_HIT_KEY", "GraphthriftLangChainCache", "as_langchain_cache"]

_MODEL_RE = re.compile(r"""['"](?:model_name|model|model_id)['"]\s*[:,]\s*['"]([^'"]+)['"]""")
logger = logging.getLogger("graphthrift.cache")
#: ``response_metadata`` key of a generation served by this cache.
CACHE_HIT_KEY = "graphthrift_cache"


def _hit_tags() -> dict[str, Any]:
    """The running call's feature, node, thread and run (the enclosing runnable's config,
    else the tags bound for this call), for the hit's ledger row."""
    return hit_tags(run_tags(run_config()))


def _run_scope() -> dict[str, Any]:
    """The scope of the model call running now: the enclosing runnable's metadata, then
    the tags bound for this call (by ``CostTagger`` or ``graphthrift.scoped``), which win."""
    scope = cache_request(run_config())
    bound: Mapping[str, Any] = current_run_tags() or {}
    if bound.get("tenant_id") not in (None, ""):
        scope["tenant_id"] = bound["tenant_id"]
    if bound.get("scope") not in (None, ""):
        scope["scope"] = bound["scope"]
        scope.pop("user_id", None)
    elif bound.get("user_id") not in (None, ""):
        scope.pop("scope", None)
        scope["user_id"] = bound["user_id"]
    return scope


def _clean(generation: Generation) -> Generation:
    """The generation as stored: usage a provider garbled (NaN, inf, text) is dropped, so
    that LangChain's serializer can read the entry back (issue 12, item 7)."""
    if not isinstance(generation, ChatGeneration):
        return generation
    raw = getattr(generation.message, "usage_metadata", None)
    if raw is None or read_usage(raw) is not None:
        return generation
    message = generation.message.model_copy(update={"usage_metadata": None})
    return generation.model_copy(update={"message": message})


class GraphthriftLangChainCache(BaseCache):
    """LangChain's cache interface on an ``ExactCache`` or ``SemanticCache``.

    Args:
        cache: the graphthrift cache (its namespace and versions apply).
        single_tenant: serve and store with the cache's own defaults when the run names no
            tenant. Leave it False in a multi-tenant process: an unscoped call then gets a
            miss, never another tenant's answer.
        **scope: scope fields (namespace, versions, ...) overriding the cache's defaults;
            the run's scope wins over them.

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> set_llm_cache(as_langchain_cache(SemanticCache(store)))
        >>> with graphthrift.scoped(tenant_id="acme"):
        ...     model.invoke("What are your opening hours?")
    """

    def __init__(
        self,
        cache: ExactCache,
        *,
        single_tenant: bool = False,
        **scope: Unpack[CacheScopeKwargs],
    ) -> None:
        self.cache = checked_cache(cache, scope)
        self.single_tenant = single_tenant
        self.scope = scope

    def _query(self, prompt: str) -> Any:
        try:
            value = loads(prompt, allowed_objects="messages")
        except Exception:
            return prompt
        if isinstance(value, list) and value and all(hasattr(m, "type") for m in value):
            return value
        return prompt

    def _scope(self, llm_string: str) -> dict[str, Any] | None:
        """The scope of this call, or None when no tenant is known and the cache is not
        single-tenant (then nothing is served or stored)."""
        run = _run_scope()
        if run.get("tenant_id") in (None, "") and not self.single_tenant:
            first = diagnostics.get("cache_unscoped") == 0
            diagnostics.count("cache_unscoped")
            if first:
                logger.warning(
                    "graphthrift: as_langchain_cache() served and stored nothing for a call"
                    " with no tenant in scope; tag the run (CostTagger + metadata tenant_id,"
                    " or graphthrift.scoped(...)) or build it with single_tenant=True"
                )
            return None
        base = self.scope.get("model_version") or self.cache.defaults.model_version
        version = fingerprint([llm_string])
        return {
            **self.scope,
            **run,
            "model_version": f"{base}|{version}" if base else version,
        }

    @staticmethod
    def _result(hit: CacheHit | None) -> RETURN_VAL_TYPE | None:
        if hit is None:
            return None
        stored = (hit.payload or {}).get("generations") if isinstance(hit.payload, dict) else None
        if not stored:
            return [Generation(text=hit.answer)]
        generations = [loads(g, allowed_objects="core") for g in stored]
        info = {"layer": hit.layer, "hit_id": hit.hit_id, "similarity": hit.similarity}
        for gen in generations:
            if isinstance(gen, ChatGeneration):
                # marked: CostTagger books no model call for it, and no cache stores it
                meta = {**gen.message.response_metadata, CACHE_HIT_KEY: info}
                gen.message.response_metadata = {**meta, **own_marker("cache")}
        return generations

    def _update_args(
        self, llm_string: str, return_val: Sequence[Generation]
    ) -> dict[str, Any] | None:
        scope = self._scope(llm_string)
        if scope is None:
            return None
        tool_calls = False
        model = None
        source = None
        input_tokens = output_tokens = 0
        for gen in return_val:
            if isinstance(gen, ChatGeneration):
                message = gen.message
                if source is None or unstorable(message):
                    source = message  # any own, error or refusal generation blocks the store
                tool_calls = tool_calls or bool(getattr(message, "tool_calls", None))
                usage = read_usage(getattr(message, "usage_metadata", None))
                if usage is not None:
                    input_tokens = max(input_tokens, usage.input_tokens)  # one shared prompt
                    output_tokens += usage.output_tokens
                model = model or answered_by(message)
        if model is None:
            found = _MODEL_RE.search(llm_string)
            model = found.group(1) if found else None
        return {
            "payload": {"generations": [dumps(_clean(g)) for g in return_val]},
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "tool_calls": tool_calls,
            "source": source,
            **scope,
        }

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The stored generations for this prompt's question under this model, or None
        (also when no tenant is in scope, see the module docstring)."""
        scope = self._scope(llm_string)
        if scope is None:
            return None
        return self._result(self.cache.lookup(self._query(prompt), **scope, **_hit_tags()))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async twin of ``lookup``."""
        scope = self._scope(llm_string)
        if scope is None:
            return None
        return self._result(await self.cache.alookup(self._query(prompt), **scope, **_hit_tags()))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the generations (skipped for tool calls unless ``cache_tool_calls``, for
        graphthrift's own messages, errors and refusals, and with no tenant in scope)."""
        args = self._update_args(llm_string, return_val) if return_val else None
        if args is not None:
            self.cache.update(self._query(prompt), return_val[0].text, **args)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async twin of ``update``."""
        args = self._update_args(llm_string, return_val) if return_val else None
        if args is not None:
            await self.cache.aupdate(self._query(prompt), return_val[0].text, **args)

    def _clear_scope(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        run = _run_scope()
        run.pop("user_id", None)
        return {**self.scope, **run, **kwargs}

    def clear(self, **kwargs: Any) -> None:
        """Delete the entries of the tenant in scope (else the cache's default tenant) in
        this namespace, for every model and version."""
        self.cache.clear(**self._clear_scope(kwargs))

    async def aclear(self, **kwargs: Any) -> None:
        """Async twin of ``clear``."""
        await self.cache.aclear(**self._clear_scope(kwargs))


def as_langchain_cache(
    cache: ExactCache, *, single_tenant: bool = False, **scope: Unpack[CacheScopeKwargs]
) -> GraphthriftLangChainCache:
    """``cache`` as a ``langchain_core.caches.BaseCache`` (``ChatOpenAI(cache=...)``).

    It serves only calls whose tenant is known from the run (``CostTagger`` or
    ``graphthrift.scoped``), unless ``single_tenant=True``: LangChain's cache interface
    never sees the run's config (issue 12, item 2). ``scope`` keywords override the
    cache's defaults; the run's scope wins over them.
    """
    return GraphthriftLangChainCache(cache, single_tenant=single_tenant, **scope)
