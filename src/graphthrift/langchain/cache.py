"""``GraphthriftLangChainCache``: a ``langchain_core.caches.BaseCache`` over our caches.

Set it as a model's cache (``ChatOpenAI(cache=...)``) or globally (``set_llm_cache``).
LangChain keys its cache on the whole serialized prompt; we key on what users expect:

- the prompt is read back into messages and keyed by ``default_key`` (latest user message
  plus a fingerprint of the system prompt), so an ``ExactCache`` hits across conversations
  that ask the same thing, and a ``SemanticCache`` across paraphrases;
- ``llm_string`` (model name and parameters) becomes part of ``model_version``, so answers
  of one model or temperature are never served for another;
- generations are stored with LangChain's own serializer and come back equal;
- answers that were tool calls are not stored unless the cache has ``cache_tool_calls=True``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumps, loads
from langchain_core.outputs import ChatGeneration, Generation

from graphthrift.cache import CacheHit, ExactCache
from graphthrift.cache import fingerprint as _fingerprint

__all__ = ["GraphthriftLangChainCache"]

_MODEL_RE = re.compile(r"""['"](?:model_name|model|model_id)['"]\s*[:,]\s*['"]([^'"]+)['"]""")


class GraphthriftLangChainCache(BaseCache):
    """LangChain's cache interface on an ``ExactCache`` or ``SemanticCache``.

    Args:
        cache: the graphthrift cache (its tenant, namespace and versions apply).
        **scope: scope fields (tenant_id, namespace, ...) overriding the cache's defaults.

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> set_llm_cache(SemanticCache(store, tenant_id="acme").as_langchain_cache())
    """

    def __init__(self, cache: ExactCache, **scope: Any) -> None:
        if not isinstance(cache, ExactCache):
            raise TypeError(f"expected an ExactCache or SemanticCache, got {type(cache).__name__}")
        self.cache = cache
        self.scope = scope

    def _query(self, prompt: str) -> Any:
        try:
            value = loads(prompt, allowed_objects="messages")
        except Exception:
            return prompt
        if isinstance(value, list) and value and all(hasattr(m, "type") for m in value):
            return value
        return prompt

    def _scope(self, llm_string: str) -> dict[str, Any]:
        base = self.scope.get("model_version") or self.cache.defaults.model_version
        version = _fingerprint([llm_string])
        return {**self.scope, "model_version": f"{base}|{version}" if base else version}

    @staticmethod
    def _result(hit: CacheHit | None) -> RETURN_VAL_TYPE | None:
        if hit is None:
            return None
        stored = (hit.payload or {}).get("generations") if isinstance(hit.payload, dict) else None
        if stored:
            return [loads(g, allowed_objects="core") for g in stored]
        return [Generation(text=hit.answer)]

    def _update_args(self, llm_string: str, return_val: Sequence[Generation]) -> dict[str, Any]:
        tool_calls = False
        model = None
        input_tokens = output_tokens = 0
        for gen in return_val:
            if isinstance(gen, ChatGeneration):
                message = gen.message
                tool_calls = tool_calls or bool(getattr(message, "tool_calls", None))
                usage = getattr(message, "usage_metadata", None) or {}
                input_tokens += int(usage.get("input_tokens", 0) or 0)
                output_tokens += int(usage.get("output_tokens", 0) or 0)
                meta = message.response_metadata or {}
                model = model or meta.get("model_name") or meta.get("model")
        if model is None:
            found = _MODEL_RE.search(llm_string)
            model = found.group(1) if found else None
        return {
            "payload": {"generations": [dumps(g) for g in return_val]},
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "tool_calls": tool_calls,
            **self._scope(llm_string),
        }

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The stored generations for this prompt's question under this model, or None."""
        return self._result(self.cache.lookup(self._query(prompt), **self._scope(llm_string)))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async twin of ``lookup``."""
        hit = await self.cache.alookup(self._query(prompt), **self._scope(llm_string))
        return self._result(hit)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the generations (skipped for tool calls unless ``cache_tool_calls``)."""
        if not return_val:
            return
        args = self._update_args(llm_string, return_val)
        self.cache.update(self._query(prompt), return_val[0].text, **args)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async twin of ``update``."""
        if not return_val:
            return
        args = self._update_args(llm_string, return_val)
        await self.cache.aupdate(self._query(prompt), return_val[0].text, **args)

    def clear(self, **kwargs: Any) -> None:
        """Delete the cache's entries for its tenant and namespace (every model and version)."""
        self.cache.clear(**{**self.scope, **kwargs})

    async def aclear(self, **kwargs: Any) -> None:
        """Async twin of ``clear``."""
        await self.cache.aclear(**{**self.scope, **kwargs})
