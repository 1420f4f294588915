"""``choose_model``: a LangGraph node for the cheap-first cascade, and ``route_on_model``.

Two ways to use it:

- **with ``models``** (name -> chat model): the node runs the whole cascade itself through
  ``Router.run``: cheap model, checks, strong model when needed, errors included. The
  answer is appended to the messages. Each model call carries ``metadata["route"]``
  (``cheap`` or ``escalated``), which ``CostTagger`` records in the ledger.
- **without ``models``**: the node only decides, and ``route_on_model(cheap=..., strong=...)``
  sends the graph to the node of the chosen model. Loop that model node back to
  ``choose_model``: on re-entry it checks the cheap answer, and either accepts it (the edge
  goes to ``done``, default ``END``) or removes it and sends the request to the strong model.

The graph's state must extend ``RouteState`` (LangGraph drops writes to undeclared keys);
the node raises ``StateSchemaError`` naming it otherwise. A rejected cheap answer is not
served, but it was paid for: the node keeps its usage in ``route_calls`` so that a
``enforce_budget``'s settle books it too. Route rows carry the run's tags and the node
(``graphthrift.kernel.run_tags``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, MessagesState

from graphthrift.errors import ConfigError
from graphthrift.kernel import answered_by, read_state, run_tags
from graphthrift.langgraph._state import latest
from graphthrift.langgraph.budget import budget_max_tokens
from graphthrift.langgraph.compress import resolve_compression_savings
from graphthrift.route.router import RouteDecision, Router, RouteResult

__all__ = ["RouteState", "choose_model", "route_by_model", "route_model", "route_on_model"]

_SCHEMA = "RouteState"


class RouteState(MessagesState):
    """The state ``choose_model`` reads and writes; extend it with your graph's own keys.

    Every key the node writes is declared here, so a graph built on ``RouteState`` alone
    needs no hand-rolled schema:

    - ``route_calls`` always has a value (``[]``): the calls of this step whose answers were
      not served (a rejected cheap answer), as ``{"model", "usage"}`` dicts for the budget;
    - ``route``: ``"cheap"`` or ``"escalated"``; ``route_model``: the chosen model's name;
    - ``route_reason``: why it escalated; ``route_difficulty``: the request's score;
    - ``route_next``: the model the edge sends the graph to next, or ``END`` once answered.
    """

    route_calls: Annotated[list[dict[str, Any]], latest]
    route: NotRequired[str | None]
    route_model: NotRequired[str | None]
    route_reason: NotRequired[str | None]
    route_difficulty: NotRequired[float | None]
    route_next: NotRequired[str | None]


def _read(state: Any, key: str) -> Any:
    """An optional key of the state (None when absent)."""
    return read_state(state, key, schema=_SCHEMA, node="choose_model", default=None)


def _thread(config: RunnableConfig | None) -> str | None:
    value = run_tags(config).get("thread_id")
    return None if value is None else str(value)


def _unserved(model: str, answer: Any) -> dict[str, Any]:
    """A paid-for call whose answer was not served, for ``route_calls``."""
    usage = getattr(answer, "usage_metadata", None)
    return {"model": answered_by(answer, model), "usage": dict(usage) if usage else None}


def _call_config(config: RunnableConfig | None, route: str) -> RunnableConfig:
    metadata = dict((config or {}).get("metadata") or {})
    metadata["route"] = route
    return {"metadata": metadata}


def _result_update(result: RouteResult, router: Router) -> dict[str, Any]:
    calls = []
    if result.cheap_answer is not None:
        calls.append(_unserved(router.cheap, result.cheap_answer))
    return {
        "route": result.route,
        "route_model": result.model,
        "route_reason": result.reason,
        "route_next": END,
        "route_calls": calls,
    }


def _decision_update(decision: RouteDecision) -> dict[str, Any]:
    return {
        "route_calls": [],
        "route": decision.route,
        "route_model": decision.model,
        "route_reason": decision.reason,
        "route_difficulty": round(decision.difficulty, 4),
        "route_next": decision.model,
    }


def route_by_model(state: Any) -> str:
    """Deprecated: use ``route_on_model(cheap=..., strong=...)``.

    The conditional edge that returns the chosen model's name (for a path map keyed by
    model names), or ``END`` once an answer is accepted.
    """
    warnings.warn(
        "route_by_model is deprecated; use route_on_model(cheap=..., strong=...)",
        DeprecationWarning,
        stacklevel=2,
    )
    value = _read(state, "route_next")
    return END if value is None else str(value)


def route_on_model(cheap: str, strong: str, done: str = END) -> Callable[[Any], str]:
    """A conditional edge out of ``choose_model`` (without ``models``): to the ``cheap`` or
    the ``strong`` model's node, or to ``done`` (default ``END``) once an answer is accepted.

    The same shape as ``route_on_cache_hit`` and ``route_on_budget``: destinations in, an
    edge ``state -> node`` out, so no path map is needed::

        builder.add_conditional_edges("route", route_on_model("cheap", "strong"))
    """
    for label, node in (("cheap", cheap), ("strong", strong), ("done", done)):
        if not isinstance(node, str) or not node:
            raise ConfigError(f"route_on_model({label}=...)", node, "must name a node")

    def route(state: Any) -> str:
        if _read(state, "route_next") in (None, END):
            return done
        return cheap if _read(state, "route") == "cheap" else strong

    route.__name__ = f"route_on_model_{cheap}_{strong}"
    return route


def choose_model(
    router: Router,
    *,
    models: Mapping[str, Any] | None = None,
    messages_key: str = "messages",
    tags: Mapping[str, Any] | None = None,
    max_tokens_param: str = "max_tokens",
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that routes the latest request to the cheapest adequate model.

    State keys:
        reads ``messages_key`` (default ``messages``): the conversation.
        writes ``route`` (``cheap`` / ``escalated``), ``route_model`` (model name),
            ``route_reason``, ``route_difficulty`` and ``route_next`` (for
            ``route_on_model``: a model name, or ``END`` once answered); all declared by
            ``RouteState``.
        writes ``messages_key``: with ``models``, the served answer is appended; without,
            a rejected cheap answer is removed (``RemoveMessage``) before escalating.
        writes ``route_calls``: the rejected cheap answers' usage (see ``RouteState``).
        reads ``budget_max_tokens`` (``BudgetState``), when ``enforce_budget`` runs first:
            each model call is capped at the output the guard reserved.

    Args:
        router: the ``Router`` (cheap and strong model names, validators, sticky threads).
        models: model name -> chat model, to run the cascade inside this node.
        tags: fixed ledger tags for the router's ``kind="route"`` rows; the run's tags and
            the node name are added per call.
        max_tokens_param: the models' output-cap keyword, bound to the reserved cap.

    Example:
        >>> builder.add_node("route", choose_model(router))
        >>> builder.add_conditional_edges("route", route_on_model("cheap", "strong"))
        >>> builder.add_edge("cheap", "route"); builder.add_edge("strong", "route")
    """
    if models is not None:
        missing = {router.cheap, router.strong} - set(models)
        if missing:
            raise ConfigError(
                "choose_model(models=...)", sorted(models), f"has no entry for {sorted(missing)}"
            )
    fixed = dict(tags or {})

    def call_tags(config: RunnableConfig | None) -> dict[str, Any]:
        return run_tags(config, **fixed)

    def model_for(name: str, state: Any) -> Any:
        """The chat model, capped at the output a budget guard reserved (if one did)."""
        cap = budget_max_tokens(state)
        model = models[name] if models is not None else None
        return model if cap is None or model is None else model.bind(**{max_tokens_param: cap})

    def previous_calls(state: Any) -> list[Any]:
        return list(read_state(state, "route_calls", schema=_SCHEMA, node="choose_model") or [])

    def escalation_state(
        state: Any, config: RunnableConfig
    ) -> tuple[list[Any], dict[str, Any] | None]:
        """On re-entry after the cheap model answered: accept or escalate."""
        previous = previous_calls(state)
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

        def accept(model: str, route: Literal["cheap", "escalated"], why: Any) -> dict[str, Any]:
            """Record the served answer's route row; the edge then goes to ``done``."""
            result = RouteResult(last, model, route, why, decision, 1)
            router.record(result, thread_id=_thread(config), tags=call_tags(config))
            served = answered_by(last, model)
            return {"route_next": END, **resolve_compression_savings(state, served, served=True)}

        if tier == "strong":
            return messages, accept(router.strong, "escalated", reason)
        verdict = router.check(last)
        if verdict is None:
            return messages, accept(router.cheap, "cheap", None)
        remove = [RemoveMessage(id=last.id)] if last.id else []
        return messages, {
            "route_calls": [*previous, _unserved(router.cheap, last)],
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
            out: BaseMessage = model_for(name, state).invoke(messages, _call_config(config, route))
            return out

        result = router.run(messages, call, thread_id=thread, tags=call_tags(config))
        return {
            **_result_update(result, router),
            **resolve_compression_savings(state, result.model, served=True),
            messages_key: [result.answer],
        }

    async def anode(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, update = escalation_state(state, config)
        if update is not None:
            return update
        thread = _thread(config)
        if models is None:
            return _decision_update(router.route(messages, thread_id=thread))

        async def call(name: str) -> BaseMessage:
            route = "cheap" if name == router.cheap else "escalated"
            out: BaseMessage = await model_for(name, state).ainvoke(
                messages, _call_config(config, route)
            )
            return out

        result = await router.arun(messages, call, thread_id=thread, tags=call_tags(config))
        return {
            **_result_update(result, router),
            **resolve_compression_savings(state, result.model, served=True),
            messages_key: [result.answer],
        }

    return RunnableLambda(node, afunc=anode, name="choose_model")


def route_model(router: Router, **kwargs: Any) -> RunnableLambda[Any, dict[str, Any]]:
    """Deprecated: ``choose_model`` (same arguments)."""
    warnings.warn("route_model is deprecated; use choose_model", DeprecationWarning, stacklevel=2)
    return choose_model(router, **kwargs)
