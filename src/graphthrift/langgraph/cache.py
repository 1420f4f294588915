"""LangGraph nodes for the answer cache, and the conditional edge that skips the model.

    builder.add_node("cache_lookup", cache_lookup(cache))
    builder.add_node("model", call_model)
    builder.add_node("cache_store", cache_store(cache))
    builder.add_edge(START, "cache_lookup")
    builder.add_conditional_edges("cache_lookup", route_on_cache_hit("model"))
    builder.add_edge("model", "cache_store")
    builder.add_edge("cache_store", END)

State keys: ``messages`` (read; a hit appends an ``AIMessage``) and ``cache_hit`` (written:
a dict describing the hit, or None on a miss). Tenant, scope, versions and feature come
from ``config["metadata"]`` (``tenant_id``, ``scope``/``user_id``, ``prompt_version``,
``model_version``, ``corpus_version``, ``feature``); the node name from LangGraph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END

from graphthrift.cache import CacheHit, ExactCache

__all__ = ["cache_lookup", "cache_store", "route_on_cache_hit"]

_SCOPE_KEYS = (
    "tenant_id",
    "scope",
    "namespace",
    "prompt_version",
    "model_version",
    "corpus_version",
)


def _scope(config: RunnableConfig | None) -> tuple[dict[str, Any], dict[str, Any]]:
    metadata: Mapping[str, Any] = (config or {}).get("metadata") or {}
    scope = {k: metadata[k] for k in _SCOPE_KEYS if metadata.get(k) is not None}
    if "scope" not in scope and metadata.get("user_id") is not None:
        scope["scope"] = metadata["user_id"]
    tags = {"feature": metadata.get("feature"), "node": metadata.get("langgraph_node")}
    return scope, tags


def _hit_update(hit: CacheHit | None, messages_key: str, hit_key: str) -> dict[str, Any]:
    if hit is None:
        return {hit_key: None}
    info = {k: v for k, v in asdict(hit).items() if k != "payload"}
    info["hit_id"] = hit.hit_id
    message = AIMessage(hit.answer, response_metadata={"graphthrift_cache": info})
    return {messages_key: [message], hit_key: info}


def cache_lookup(
    cache: ExactCache, *, messages_key: str = "messages", hit_key: str = "cache_hit"
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that answers from ``cache`` when it can.

    Reads ``state[messages_key]``; writes ``state[hit_key]`` (None on a miss) and, on a hit,
    appends the cached answer as an ``AIMessage`` to ``state[messages_key]``. The database
    failing means a miss, never an error.
    """

    def lookup(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        scope, tags = _scope(config)
        hit = cache.lookup(state[messages_key], **tags, **scope)
        return _hit_update(hit, messages_key, hit_key)

    async def alookup(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        scope, tags = _scope(config)
        hit = await cache.alookup(state[messages_key], **tags, **scope)
        return _hit_update(hit, messages_key, hit_key)

    return RunnableLambda(lookup, afunc=alookup, name="cache_lookup")


def _store_args(
    state: Mapping[str, Any], messages_key: str, hit_key: str
) -> tuple[list[Any], str, dict[str, Any]] | None:
    if state.get(hit_key):
        return None  # the answer came from the cache
    messages = list(state.get(messages_key) or [])
    if not messages or getattr(messages[-1], "type", None) != "ai":
        return None
    answer = messages[-1]
    usage = getattr(answer, "usage_metadata", None) or {}
    meta = getattr(answer, "response_metadata", None) or {}
    args = {
        "model": meta.get("model_name") or meta.get("model"),
        "input_tokens": int(usage.get("input_tokens", 0) or 0),
        "output_tokens": int(usage.get("output_tokens", 0) or 0),
        "tool_calls": bool(getattr(answer, "tool_calls", None)),
        "structured": state.get("structured_response") is not None,
    }
    return messages[:-1], answer.text, args


def cache_store(
    cache: ExactCache, *, messages_key: str = "messages", hit_key: str = "cache_hit"
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that stores the model's latest answer under the question it answered.

    Reads ``state[messages_key]`` (the last message must be the model's ``AIMessage``) and
    ``state[hit_key]`` (nothing is stored after a hit). Answers with tool calls or structured
    output are skipped unless the cache has ``cache_tool_calls=True``. Writes nothing.
    """

    def store(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        found = _store_args(state, messages_key, hit_key)
        if found is not None:
            question, answer, args = found
            scope, _ = _scope(config)
            cache.update(question, answer, **args, **scope)
        return {}

    async def astore(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        found = _store_args(state, messages_key, hit_key)
        if found is not None:
            question, answer, args = found
            scope, _ = _scope(config)
            await cache.aupdate(question, answer, **args, **scope)
        return {}

    return RunnableLambda(store, afunc=astore, name="cache_store")


def route_on_cache_hit(
    miss: str, hit: str = END, *, hit_key: str = "cache_hit"
) -> Callable[[Mapping[str, Any]], str]:
    """A conditional edge: to ``hit`` (default END) after a hit, else to ``miss``."""

    def route(state: Mapping[str, Any]) -> str:
        return hit if state.get(hit_key) else miss

    route.__name__ = f"route_on_cache_hit_{miss}"
    return route
