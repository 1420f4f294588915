"""``SemanticCacheMiddleware``: answer an agent's model call from the cache when possible.

It wraps the model call of ``create_agent``. At the start of a turn (the last message is the
user's), it looks the question up; on a hit the model is not called and the cached answer is
returned as the model's response. After a miss, a final answer (no tool calls, no structured
output) is stored. Model calls inside the tool loop (the last message is a tool result) are
neither looked up nor stored, so an answer that depended on tool results is only ever
served for the same question at the start of a turn. Tenant, scope and versions come from
the run's ``config["metadata"]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage

from graphthrift.cache import CacheHit, ExactCache

__all__ = ["SemanticCacheMiddleware"]

_SCOPE_KEYS = (
    "tenant_id",
    "scope",
    "namespace",
    "prompt_version",
    "model_version",
    "corpus_version",
)


def _metadata() -> Mapping[str, Any]:
    try:
        from langgraph.config import get_config

        return get_config().get("metadata") or {}
    except RuntimeError:  # not inside a runnable
        return {}


class SemanticCacheMiddleware(AgentMiddleware):
    """Serve repeated (or, with a ``SemanticCache``, similar) questions without the model.

    Args:
        cache: an ``ExactCache`` or ``SemanticCache``; its ``cache_tool_calls`` setting
            decides whether tool-call answers are stored.
        **scope: scope fields overriding the cache's defaults (the run's metadata wins).

    Example:
        >>> agent = create_agent(model, tools, middleware=[SemanticCacheMiddleware(cache)])
        >>> agent.invoke({"messages": [{"role": "user", "content": "opening hours?"}]},
        ...              {"metadata": {"tenant_id": "acme"}})
    """

    def __init__(self, cache: ExactCache, **scope: Any) -> None:
        super().__init__()
        if not isinstance(cache, ExactCache):
            raise TypeError(f"expected an ExactCache or SemanticCache, got {type(cache).__name__}")
        self.cache = cache
        self.scope = scope

    def _prepare(self, request: ModelRequest[Any]) -> tuple[list[Any], dict[str, Any]] | None:
        messages = list(request.messages)
        if not messages or getattr(messages[-1], "type", None) != "human":
            return None
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        metadata = _metadata()
        scope = {**self.scope, **{k: metadata[k] for k in _SCOPE_KEYS if metadata.get(k)}}
        scope["feature"] = metadata.get("feature")
        scope["node"] = metadata.get("langgraph_node")
        return messages, scope

    @staticmethod
    def _hit_response(hit: CacheHit) -> ModelResponse[Any]:
        info = {"layer": hit.layer, "hit_id": hit.hit_id, "similarity": hit.similarity}
        return ModelResponse(
            result=[AIMessage(hit.answer, response_metadata={"graphthrift_cache": info})]
        )

    @staticmethod
    def _store_args(response: ModelResponse[Any]) -> tuple[str, dict[str, Any]] | None:
        answers = [m for m in response.result if isinstance(m, AIMessage)]
        if not answers:
            return None
        answer = answers[-1]
        usage: Mapping[str, Any] = answer.usage_metadata or {}
        meta = answer.response_metadata or {}
        return answer.text, {
            "model": meta.get("model_name") or meta.get("model"),
            "input_tokens": int(usage.get("input_tokens", 0) or 0),
            "output_tokens": int(usage.get("output_tokens", 0) or 0),
            "tool_calls": bool(answer.tool_calls),
            "structured": response.structured_response is not None,
        }

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Return the cached answer on a hit; otherwise call the model and store its answer."""
        prepared = self._prepare(request)
        if prepared is None:
            return handler(request)
        messages, scope = prepared
        hit = self.cache.lookup(messages, **scope)
        if hit is not None:
            return self._hit_response(hit)
        response = handler(request)
        stored = self._store_args(response)
        if stored is not None:
            scope.pop("feature", None)
            scope.pop("node", None)
            self.cache.update(messages, stored[0], **stored[1], **scope)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        prepared = self._prepare(request)
        if prepared is None:
            return await handler(request)
        messages, scope = prepared
        hit = await self.cache.alookup(messages, **scope)
        if hit is not None:
            return self._hit_response(hit)
        response = await handler(request)
        stored = self._store_args(response)
        if stored is not None:
            scope.pop("feature", None)
            scope.pop("node", None)
            await self.cache.aupdate(messages, stored[0], **stored[1], **scope)
        return response
