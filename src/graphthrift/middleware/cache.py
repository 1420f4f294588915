"""Cache middleware for ``create_agent``: answer a model call from the cache when possible.

It wraps the model call. At the start of a turn (the last message is the user's), it looks
the question up; on a hit the model is not called and the cached answer is returned as the
model's response. After a miss, the answer is stored unless it must not be (below). Model
calls inside the tool loop (the last message is a tool result) are neither looked up nor
stored, so an answer that depended on tool results is only ever served for the same
question at the start of a turn.

- ``SemanticCacheMiddleware`` takes a ``SemanticCache`` (paraphrases hit);
  ``ExactCacheMiddleware`` (formerly ``CacheMiddleware``) takes either layer. Giving ``SemanticCacheMiddleware`` an
  ``ExactCache`` is an error: it would silently match word for word only.
- The key is the question plus a fingerprint of the system prompt and the earlier turns;
  answers that depend on earlier turns are kept to the asking user (issue 11, item 3).
  Tenant, user, scope and versions come from the run's metadata through
  ``graphthrift.kernel`` (the same rule as every adapter: ``0`` is a valid id, and the
  user's id stands in for a missing ``scope``); so do usage and the answering model.
- Never stored: graphthrift's own messages (a budget's refusal, an answer a budget rung
  degraded, a cache hit), errors, refusals, content-filter stops, structured output.
- Tool calls (with ``cache_tool_calls=True``) are replayed faithfully: the stored
  ``AIMessage`` comes back with its tool calls (fresh call ids), so the agent runs the
  tools again and the model answers from their fresh results.

Order: put the cache middleware first (outermost) in ``create_agent(middleware=[...])``,
before ``BudgetMiddleware`` and the routing middleware: a hit then spends no budget, and the
answers a budget ends or degrades are marked before the cache sees them.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, Unpack

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage

from graphthrift.cache.exact import ExactCache, checked_cache
from graphthrift.cache.hit import CacheHit
from graphthrift.cache.scope import CacheScopeKwargs
from graphthrift.cache.semantic import SemanticCache
from graphthrift.errors import CacheArgumentError
from graphthrift.kernel import (
    answered_by,
    cache_request,
    hit_tags,
    read_usage,
    run_config,
    run_tags,
)
from graphthrift.provenance import own_marker

__all__ = ["CacheMiddleware", "ExactCacheMiddleware", "SemanticCacheMiddleware"]


def _runtime_context(request: ModelRequest[Any]) -> str | None:
    """The agent's runtime context (``create_agent(..., context_schema=...)``), as text.

    A middleware inside this one (``dynamic_prompt``, say) or a tool may personalise the
    call from it, so the answer depends on it: it joins the key (an outside probe saw Bob
    served Alice's answer when it did not).
    """
    context = getattr(getattr(request, "runtime", None), "context", None)
    if context is None:
        return None
    if dataclasses.is_dataclass(context) and not isinstance(context, type):
        context = dataclasses.asdict(context)
    elif hasattr(context, "model_dump"):
        context = context.model_dump()
    return json.dumps(context, sort_keys=True, default=repr)


class ExactCacheMiddleware(AgentMiddleware):
    """Serve repeated questions without the model, from an ``ExactCache`` or ``SemanticCache``.

    Args:
        cache: the cache; its ``cache_tool_calls`` setting decides whether tool-call
            answers are stored (and then replayed with their tool calls).
        **scope: scope fields overriding the cache's defaults (the run's metadata wins).

    Example:
        >>> agent = create_agent(model, tools, middleware=[ExactCacheMiddleware(ExactCache(store))])

    Raises:
        CacheArgumentError: ``cache`` is not a cache (also a ``TypeError``).
        UnknownScopeKey: a ``scope`` keyword is not one (``tenant=`` for ``tenant_id=``).
    """

    def __init__(self, cache: ExactCache, **scope: Unpack[CacheScopeKwargs]) -> None:
        super().__init__()
        self.cache = checked_cache(cache, scope)
        self.scope: CacheScopeKwargs = scope

    def _prepare(self, request: ModelRequest[Any]) -> tuple[list[Any], dict[str, Any]] | None:
        messages = list(request.messages)
        if not messages or getattr(messages[-1], "type", None) != "human":
            return None
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        scope = cache_request(run_config(), **self.scope)
        context = _runtime_context(request)
        if context is not None:
            scope["context"] = context
        return messages, scope

    def _lookup_tags(self) -> dict[str, Any]:
        return hit_tags(run_tags(run_config()))

    @staticmethod
    def _hit_response(hit: CacheHit) -> ModelResponse[Any]:
        info = {"layer": hit.layer, "hit_id": hit.hit_id, "similarity": hit.similarity}
        marks = {"graphthrift_cache": info, **own_marker("cache")}
        stored = hit.payload.get("message") if isinstance(hit.payload, dict) else None
        if stored:
            message = loads(stored, allowed_objects="messages")
            calls = [{**c, "id": f"call_{uuid.uuid4().hex[:24]}"} for c in message.tool_calls]
            message = message.model_copy(
                update={
                    "id": None,
                    "tool_calls": calls,
                    "response_metadata": {**message.response_metadata, **marks},
                }
            )
            return ModelResponse(result=[message])
        return ModelResponse(result=[AIMessage(hit.answer, response_metadata=marks)])

    def _store_args(self, response: ModelResponse[Any]) -> tuple[str, dict[str, Any]] | None:
        answers = [m for m in response.result if isinstance(m, AIMessage)]
        if not answers:
            return None
        answer = answers[-1]
        usage = read_usage(answer.usage_metadata)
        tool_calls = bool(answer.tool_calls)
        return answer.text, {
            "model": answered_by(answer),
            "input_tokens": usage.input_tokens if usage else 0,
            "output_tokens": usage.output_tokens if usage else 0,
            "tool_calls": tool_calls,
            "structured": response.structured_response is not None,
            "source": answer,
            # a tool-call answer is replayed as the message itself, tool calls included
            "payload": (
                {"message": dumps(answer.model_copy(update={"usage_metadata": None}))}
                if tool_calls
                else None
            ),
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
        hit = self.cache.lookup(messages, **scope, **self._lookup_tags())
        if hit is not None:
            return self._hit_response(hit)
        response = handler(request)
        stored = self._store_args(response)
        if stored is not None:
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
        hit = await self.cache.alookup(messages, **scope, **self._lookup_tags())
        if hit is not None:
            return self._hit_response(hit)
        response = await handler(request)
        stored = self._store_args(response)
        if stored is not None:
            await self.cache.aupdate(messages, stored[0], **stored[1], **scope)
        return response


class SemanticCacheMiddleware(ExactCacheMiddleware):
    """Serve repeated and similar questions without the model, from a ``SemanticCache``.

    Args:
        cache: a ``SemanticCache`` (an ``ExactCache`` raises ``CacheArgumentError``, a
            ``TypeError``: use ``ExactCacheMiddleware`` for word-for-word matching).
        **scope: scope fields overriding the cache's defaults (the run's metadata wins).

    Example:
        >>> agent = create_agent(model, tools, middleware=[SemanticCacheMiddleware(cache)])
        >>> agent.invoke({"messages": [{"role": "user", "content": "opening hours?"}]},
        ...              {"metadata": {"tenant_id": "acme"}})
    """

    def __init__(self, cache: SemanticCache, **scope: Unpack[CacheScopeKwargs]) -> None:
        if isinstance(cache, ExactCache) and not isinstance(cache, SemanticCache):
            raise CacheArgumentError(
                "cache",
                cache,
                "SemanticCacheMiddleware needs a SemanticCache; an ExactCache only matches"
                " questions word for word. Use ExactCacheMiddleware(ExactCache(...)) for that,"
                " or SemanticCacheMiddleware(SemanticCache(...)) to also serve paraphrases.",
            )
        super().__init__(cache, **scope)


class CacheMiddleware(ExactCacheMiddleware):
    """Deprecated name of ``ExactCacheMiddleware`` (issue 15: middleware names read like
    LangChain's); it warns once per construction and behaves the same."""

    def __init__(self, cache: ExactCache, **scope: Unpack[CacheScopeKwargs]) -> None:
        warnings.warn(
            "CacheMiddleware is deprecated; use ExactCacheMiddleware",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(cache, **scope)
