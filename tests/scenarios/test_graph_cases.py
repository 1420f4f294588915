"""Composed LangGraph cases, each the minimal graph of one issue-11 item."""

from __future__ import annotations

import uuid
from typing import Any

from langgraph.graph import END, START, MessagesState, StateGraph
from scenario_kit import CHEAP, STRONG, World

from graphthrift import Budget, CostTagger, ExactCache, Ledger, Router
from graphthrift.errors import StateSchemaError
from graphthrift.langgraph import (
    RouteState,
    cache_answer,
    choose_model,
    enforce_budget,
    lookup_cache,
    route_on_budget,
    route_on_cache_hit,
    route_on_model,
)

from fakes import CallLog, RecordingChatModel


def _reply(messages: Any, model: str) -> Any:
    return f"{model} answers: {messages[-1].content}", []


def _config(tenant: str, thread: str, ledger: Ledger) -> dict[str, Any]:
    return {
        "configurable": {"thread_id": thread},
        "metadata": {"tenant_id": tenant, "user_id": "alice0"},
        "callbacks": [CostTagger(ledger)],
    }


def test_cache_nodes_on_plain_messages_state_hit_or_say_why(store: Any, ledger: Ledger) -> None:
    log = CallLog()
    model = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    cache = ExactCache(store, namespace=f"plain-{uuid.uuid4().hex[:8]}", ledger=ledger)
    builder = StateGraph(MessagesState)
    builder.add_node("lookup", lookup_cache(cache))
    builder.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
    builder.add_node("store", cache_answer(cache))
    builder.add_edge(START, "lookup")
    builder.add_conditional_edges("lookup", route_on_cache_hit("agent"))
    builder.add_edge("agent", "store")
    builder.add_edge("store", END)
    tenant = World.make().tenants[0]
    try:
        app = builder.compile()
        for i in range(3):
            app.invoke(
                {"messages": [("user", "How long does a refund take?")]},
                _config(tenant, f"plain-{i}", ledger),
            )
    except StateSchemaError:
        return  # a clear error naming the schema is the other correct behaviour
    assert len(log.calls) == 1, f"{len(log.calls)} model calls for one repeated question"


def test_budget_guard_on_plain_messages_state_settles_or_says_why(store: Any) -> None:
    log = CallLog()
    model = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    budget = Budget(store, max_tokens={"thread": 50_000}, max_output_tokens=100)
    guard = enforce_budget(budget, model=CHEAP)
    builder = StateGraph(MessagesState)
    builder.add_node("guard", guard.guard)
    builder.add_node("agent", guard.model_node(model))
    builder.add_node("settle", guard.settle)
    builder.add_edge(START, "guard")
    builder.add_conditional_edges("guard", route_on_budget("agent"))
    builder.add_edge("agent", "settle")
    builder.add_edge("settle", END)
    tenant, thread = World.make().tenants[0], f"plain-{uuid.uuid4().hex[:8]}"
    try:
        app = builder.compile()
        for _ in range(3):
            app.invoke(
                {"messages": [("user", "Where is my order?")]},
                {"configurable": {"thread_id": thread}, "metadata": {"tenant_id": tenant}},
            )
    except StateSchemaError:
        return
    row = budget.usage({"tenant_id": tenant, "thread_id": thread})["thread"]
    assert row["reserved_tokens"] == 0, row
    assert row["spent_tokens"] == sum(c["usage"]["total_tokens"] for c in log.calls)


def test_route_rows_name_their_node(store: Any, ledger: Ledger) -> None:
    log = CallLog()
    models = {
        CHEAP: RecordingChatModel(model_name=CHEAP, reply=_reply, log=log),
        STRONG: RecordingChatModel(model_name=STRONG, reply=_reply, log=log),
    }
    router = Router(cheap=CHEAP, strong=STRONG, ledger=ledger)
    builder = StateGraph(RouteState)
    builder.add_node("route", choose_model(router, models=models))
    builder.add_edge(START, "route")
    builder.add_conditional_edges("route", route_on_model(END, END))
    tenant = World.make().tenants[0]
    builder.compile().invoke(
        {"messages": [("user", "What are your opening hours?")]},
        _config(tenant, "route-node", ledger),
    )
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="route")
    assert rows and all(r["node"] == "route" for r in rows), [r["node"] for r in rows]
