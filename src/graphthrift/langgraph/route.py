"""``route_model``: a LangGraph node for the cheap-first cascade, and ``route_by_model``.

Two ways to use it:

- **with ``models``** (name -> chat model): the node runs the whole cascade itself through
  ``Router.run``: cheap model, checks, strong model when needed, errors included. The
  answer is appended to the messages. Each model call carries ``metadata["route"]``
  (``cheap`` or ``escalated``), which ``CostTagger`` records in the ledger.
- **without ``models``**: the node only decides, and ``route_by_model`` sends the graph to
  the node of the chosen model. Loop that model node back to ``route_model``: on re-entry
  it checks the cheap answer, and either accepts it (``route_by_model`` returns ``END``)
  or removes it and sends the request to the strong model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END

from graphthrift.budget import tags_from_metadata
from graphthrift.route import RouteDecision, Router, RouteResult

__all__ = ["route_by_model", "route_model"]


def _read(state: Any, key: str) -> Any:
    if isinstance(state, Mapping):
        return state.get(key)
    return getattr(state, key, None)


def _thread(config: RunnableConfig | None) -> str | None:
    value = ((config or {}).get("configurable") or {}).get("thread_id")
    return None if value is None else str(value)


def _call_config(config: RunnableConfig | None, route: str) -> RunnableConfig:
    metadata = dict((config or {}).get("metadata") or {})
    metadata["route"] = route
    return {"metadata": metadata}


def _result_update(result: RouteResult) -> dict[str, Any]:
    return {
        "route": result.route,
        "route_model": result.model,
        "route_reason": result.reason,
        "route_next": END,
    }


def _decision_update(decision: RouteDecision) -> dict[str, Any]:
    return {
        "route": decision.route,
        "route_model": decision.model,
        "route_reason": decision.reason,
        "route_difficulty": round(decision.difficulty, 4),
        "route_next": decision.model,
    }


def route_by_model(state: Any) -> str:
    """Conditional edge: the chosen model's name, or ``END`` once an answer is accepted."""
    value = _read(state, "route_next")
    return END if value is None else str(value)


def route_model(
    router: Router,
    *,
    models: Mapping[str, Any] | None = None,
    messages_key: str = "messages",
    tags: Mapping[str, Any] | None = None,
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that routes the latest request to the cheapest adequate model.

    State keys:
        reads ``messages_key`` (default ``messages``): the conversation.
        writes ``route`` (``cheap`` / ``escalated``), ``route_model`` (model name),
            ``route_reason``, ``route_difficulty`` and ``route_next`` (for
            ``route_by_model``: a model name, or ``END`` once answered).
        writes ``messages_key``: with ``models``, the served answer is appended; without,
            a rejected cheap answer is removed (``RemoveMessage``) before escalating.

    Args:
        router: the ``Router`` (cheap and strong model names, validators, sticky threads).
        models: model name -> chat model, to run the cascade inside this node.
        tags: fixed ledger tags for the router's ``kind="route"`` rows.

    Example:
        >>> builder.add_node("route", route_model(router))
        >>> builder.add_conditional_edges("route", route_by_model,
        ...     {"gpt-4o-mini": "cheap", "gpt-4o": "strong", END: END})
        >>> builder.add_edge("cheap", "route"); builder.add_edge("strong", "route")
    """
    if models is not None:
        missing = {router.cheap, router.strong} - set(models)
        if missing:
            raise ValueError(f"route_model: models has no entry for {sorted(missing)}")
    fixed = dict(tags or {})

    def call_tags(config: RunnableConfig | None) -> dict[str, Any]:
        config = config or {}
        return {**fixed, **tags_from_metadata(config.get("metadata"))}

    def escalation_state(
        state: Any, config: RunnableConfig
    ) -> tuple[list[Any], dict[str, Any] | None]:
        """On re-entry after the cheap model answered: accept or escalate."""
        messages = list(_read(state, messages_key) or [])
        pending = _read(state, "route_next")
        if pending in (None, END) or not messages:
            return messages, None
        last = messages[-1]
        if not isinstance(last, AIMessage):
            return messages, None
        tier: Literal["cheap", "strong"] = "cheap" if pending == router.cheap else "strong"
        decision = RouteDecision(
            str(pending), tier, float(_read(state, "route_difficulty") or 0.0), 0.0, "difficulty"
        )
        reason = _read(state, "route_reason")
        if tier == "strong":
            router.record(
                RouteResult(last, router.strong, "escalated", reason, decision, 1),
                thread_id=_thread(config),
                tags=call_tags(config),
            )
            return messages, {"route_next": END}
        verdict = router.check(last)
        if verdict is None:
            router.record(
                RouteResult(last, router.cheap, "cheap", None, decision, 1),
                thread_id=_thread(config),
                tags=call_tags(config),
            )
            return messages, {"route_next": END}
        remove = [RemoveMessage(id=last.id)] if last.id else []
        return messages, {
            "route": "escalated",
            "route_model": router.strong,
            "route_reason": verdict[0],
            "route_next": router.strong,
            messages_key: remove,
        }

    def node(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, update = escalation_state(state, config)
        if update is not None:
            return update
        thread = _thread(config)
        if models is None:
            decision = router.route(messages, thread_id=thread)
            return _decision_update(decision)

        def call(name: str) -> BaseMessage:
            route = "cheap" if name == router.cheap else "escalated"
            out: BaseMessage = models[name].invoke(messages, _call_config(config, route))
            return out

        result = router.run(messages, call, thread_id=thread, tags=call_tags(config))
        return {**_result_update(result), messages_key: [result.answer]}

    async def anode(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, update = escalation_state(state, config)
        if update is not None:
            return update
        thread = _thread(config)
        if models is None:
            return _decision_update(router.route(messages, thread_id=thread))

        async def call(name: str) -> BaseMessage:
            route = "cheap" if name == router.cheap else "escalated"
            out: BaseMessage = await models[name].ainvoke(messages, _call_config(config, route))
            return out

        result = await router.arun(messages, call, thread_id=thread, tags=call_tags(config))
        return {**_result_update(result), messages_key: [result.answer]}

    return RunnableLambda(node, afunc=anode, name="route_model")
