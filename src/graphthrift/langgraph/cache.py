"""LangGraph nodes for the answer cache, and the conditional edge that skips the model.

    builder = StateGraph(CacheState)  # or a state that extends it
    builder.add_node("lookup_cache", lookup_cache(cache))
    builder.add_node("model", call_model)
    builder.add_node("cache_answer", cache_answer(cache))
    builder.add_edge(START, "lookup_cache")
    builder.add_conditional_edges("lookup_cache", route_on_cache_hit("model"))
    builder.add_edge("model", "cache_answer")
    builder.add_edge("cache_answer", END)

``lookup_cache`` and ``cache_answer`` were ``cache_lookup`` and ``cache_store`` (node factories
are verb + object, issue 15); the old names still work and warn.

State keys, declared by ``CacheState``: ``messages`` (read; a hit appends an ``AIMessage``)
and ``cache_hit`` (written: a dict describing the hit, or None on a miss). LangGraph drops
writes to keys a state does not declare, so on a plain ``MessagesState`` the hit would be
lost and the model always called: the nodes raise ``StateSchemaError`` instead (issue 11,
item 7). Tenant, user, scope, versions and feature are read from the run's config by
``graphthrift.kernel`` (the same rule as every adapter); so are usage and the model that
answered. The node name comes from LangGraph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Annotated, Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, MessagesState

from graphthrift import diagnostics
from graphthrift.cache.exact import ExactCache
from graphthrift.cache.hit import CacheHit
from graphthrift.errors import ConfigError
from graphthrift.kernel import (
    answered_by,
    cache_request,
    hit_tags,
    read_state,
    read_usage,
    run_tags,
)
from graphthrift.langgraph._state import latest
from graphthrift.langgraph.compress import resolve_compression_savings
from graphthrift.provenance import own_marker

__all__ = [
    "CacheState",
    "cache_answer",
    "cache_lookup",
    "cache_store",
    "lookup_cache",
    "route_on_cache_hit",
]


class CacheState(MessagesState):
    """The state schema of the cache nodes: extend it (``class State(CacheState): ...``).

    ``cache_hit`` has a reducer so that LangGraph gives it a value ({}) from the first step:
    the nodes can tell a state built on this schema from one that lacks the key.
    """

    cache_hit: Annotated[dict[str, Any], latest]


_SCHEMA = "CacheState"
#: Budget states after which the answer is not the model's best (never cached).
_UNSTORABLE_BUDGET = ("degraded", "ended")


def _hit_update(hit: CacheHit | None, messages_key: str, hit_key: str) -> dict[str, Any]:
    if hit is None:
        return {hit_key: None}
    info = {k: v for k, v in asdict(hit).items() if k != "payload"}
    info["hit_id"] = hit.hit_id
    message = AIMessage(
        hit.answer, response_metadata={"graphthrift_cache": info, **own_marker("cache")}
    )
    return {messages_key: [message], hit_key: info}


def _refuse_tool_calls(cache: ExactCache, node: str) -> None:
    if cache.cache_tool_calls:
        raise ConfigError(
            "cache_tool_calls",
            True,
            f"{node}: a cache with cache_tool_calls=True cannot be used by the LangGraph cache"
            " nodes: a hit ends the turn (route_on_cache_hit), so a stored tool call would come"
            " back as an answer with no tool run. Build the cache with cache_tool_calls=False"
            " here, or use SemanticCacheMiddleware in a create_agent agent, which replays tool"
            " calls faithfully.",
        )


def _lookup_args(
    state: Any, config: RunnableConfig | None, messages_key: str, hit_key: str
) -> tuple[Any, dict[str, Any]]:
    messages = read_state(state, messages_key, schema=_SCHEMA, node="lookup_cache")
    read_state(state, hit_key, schema=_SCHEMA, node="lookup_cache")
    return messages, {**cache_request(config), **hit_tags(run_tags(config))}


def lookup_cache(
    cache: ExactCache, *, messages_key: str = "messages", hit_key: str = "cache_hit"
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that answers from ``cache`` when it can.

    Reads ``state[messages_key]``; writes ``state[hit_key]`` (None on a miss) and, on a hit,
    appends the cached answer as an ``AIMessage`` to ``state[messages_key]``. The database
    failing means a miss, never an error.

    Raises:
        StateSchemaError: the state lacks ``messages_key`` or ``hit_key`` (use ``CacheState``).
        ConfigError: the cache has ``cache_tool_calls=True`` (a hit cannot run tools here).
    """
    _refuse_tool_calls(cache, "lookup_cache")

    def answered(state: Any, hit: CacheHit | None) -> dict[str, Any]:
        update = _hit_update(hit, messages_key, hit_key)
        if hit is not None:  # no model call follows: a held compression saving is dropped
            update.update(resolve_compression_savings(state, None, served=False))
        return update

    def lookup(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, scope = _lookup_args(state, config, messages_key, hit_key)
        return answered(state, cache.lookup(messages, **scope))

    async def alookup(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, scope = _lookup_args(state, config, messages_key, hit_key)
        return answered(state, await cache.alookup(messages, **scope))

    return RunnableLambda(lookup, afunc=alookup, name="lookup_cache")


def _store_args(
    state: Any, messages_key: str, hit_key: str
) -> tuple[list[Any], str, dict[str, Any]] | None:
    messages = list(read_state(state, messages_key, schema=_SCHEMA, node="cache_answer") or [])
    if read_state(state, hit_key, schema=_SCHEMA, node="cache_answer"):
        return None  # the answer came from the cache
    if read_state(state, "budget_status", schema=_SCHEMA, node="cache_answer", default=None) in (
        _UNSTORABLE_BUDGET
    ):
        diagnostics.count("cache_skip_own")
        return None  # a budget ended or degraded this turn: not the model's best answer
    if not messages or getattr(messages[-1], "type", None) != "ai":
        return None
    humans = [i for i, m in enumerate(messages) if getattr(m, "type", None) == "human"]
    if not humans or humans[-1] != len(messages) - 2:
        # the answer followed tool results (or no question): it depends on what the tools
        # returned this time, so it is not stored under the question alone
        diagnostics.count("cache_skip_tool_loop")
        return None
    answer = messages[-1]
    usage = read_usage(getattr(answer, "usage_metadata", None))
    args = {
        "model": answered_by(answer),
        "input_tokens": usage.input_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "tool_calls": bool(getattr(answer, "tool_calls", None)),
        "structured": read_state(
            state, "structured_response", schema=_SCHEMA, node="cache_answer", default=None
        )
        is not None,
        "source": answer,
    }
    return messages[:-1], answer.text, args


def cache_answer(
    cache: ExactCache, *, messages_key: str = "messages", hit_key: str = "cache_hit"
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that stores the model's latest answer under the question it answered.

    Reads ``state[messages_key]`` (the last message must be the model's ``AIMessage``,
    right after the user's question) and ``state[hit_key]`` (nothing is stored after a
    hit). Never stored: answers with tool calls or structured output, answers that
    graphthrift produced or degraded itself (a budget's ``budget_status`` of ``degraded``
    or ``ended``, its refusal message), errors and refusals. Writes nothing.

    Raises:
        StateSchemaError: the state lacks ``messages_key`` or ``hit_key`` (use ``CacheState``).
        ConfigError: the cache has ``cache_tool_calls=True``.
    """
    _refuse_tool_calls(cache, "cache_answer")

    def store(state: Any, config: RunnableConfig) -> dict[str, Any]:
        found = _store_args(state, messages_key, hit_key)
        if found is not None:
            question, answer, args = found
            cache.update(question, answer, **args, **cache_request(config))
        return {}

    async def astore(state: Any, config: RunnableConfig) -> dict[str, Any]:
        found = _store_args(state, messages_key, hit_key)
        if found is not None:
            question, answer, args = found
            await cache.aupdate(question, answer, **args, **cache_request(config))
        return {}

    return RunnableLambda(store, afunc=astore, name="cache_answer")


def route_on_cache_hit(
    miss: str, hit: str = END, *, hit_key: str = "cache_hit"
) -> Callable[[Mapping[str, Any]], str]:
    """A conditional edge: to ``hit`` (default END) after a hit, else to ``miss``."""

    def route(state: Mapping[str, Any]) -> str:
        return hit if state.get(hit_key) else miss

    route.__name__ = f"route_on_cache_hit_{miss}"
    return route


def cache_lookup(
    cache: ExactCache, *, messages_key: str = "messages", hit_key: str = "cache_hit"
) -> RunnableLambda[Any, dict[str, Any]]:
    """Deprecated name of ``lookup_cache`` (node factories are verb + object)."""
    warnings.warn("cache_lookup is deprecated; use lookup_cache", DeprecationWarning, stacklevel=2)
    return lookup_cache(cache, messages_key=messages_key, hit_key=hit_key)


def cache_store(
    cache: ExactCache, *, messages_key: str = "messages", hit_key: str = "cache_hit"
) -> RunnableLambda[Any, dict[str, Any]]:
    """Deprecated name of ``cache_answer`` (node factories are verb + object)."""
    warnings.warn("cache_store is deprecated; use cache_answer", DeprecationWarning, stacklevel=2)
    return cache_answer(cache, messages_key=messages_key, hit_key=hit_key)
