"""Router adapters on real frameworks: LangGraph choose_model and ModelRoutingMiddleware."""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph

from graphthrift.langgraph.route import RouteState, choose_model, route_on_model
from graphthrift.middleware.route import ModelRoutingMiddleware
from graphthrift.route import Router

from fakes import usage_model

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"


State = RouteState  # the declared schema choose_model needs (issue 11, item 7)


def test_route_model_runs_the_cascade_in_one_node() -> None:
    router = Router(CHEAP, STRONG)
    models = {
        CHEAP: usage_model("I'm not sure."),
        STRONG: usage_model("It is 12.", model_name=STRONG),
    }
    builder = StateGraph(State)
    builder.add_node("route", choose_model(router, models=models))
    builder.add_edge(START, "route")
    builder.add_edge("route", END)
    out = builder.compile().invoke({"messages": [HumanMessage("How many months in a year?")]})
    assert out["route"] == "escalated" and out["route_reason"] == "confidence"
    assert out["messages"][-1].content == "It is 12."


def test_route_model_with_model_nodes_and_edge_helper(ledger: Any, tenant: str) -> None:
    router = Router(CHEAP, STRONG, ledger=ledger)
    cheap, strong = usage_model(""), usage_model("strong answer", model_name=STRONG)
    builder = StateGraph(State)
    builder.add_node("route", choose_model(router))
    builder.add_node("cheap", lambda s: {"messages": [cheap.invoke(s["messages"])]})
    builder.add_node("strong", lambda s: {"messages": [strong.invoke(s["messages"])]})
    builder.add_edge(START, "route")
    builder.add_conditional_edges("route", route_on_model("cheap", "strong"))
    builder.add_edge("cheap", "route")
    builder.add_edge("strong", "route")
    out = builder.compile().invoke(
        {"messages": [HumanMessage("What is my balance?")]}, {"metadata": {"tenant_id": tenant}}
    )
    contents = [m.content for m in out["messages"]]
    assert contents == ["What is my balance?", "strong answer"]  # empty cheap answer removed
    assert out["route"] == "escalated"
    ledger.flush()
    assert [r["route"] for r in ledger.records(tenant_id=tenant, kind="route")] == ["escalated"]


class ToolFake(type(usage_model())):  # type: ignore[misc]
    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def test_router_middleware_escalates_bad_tool_arguments() -> None:
    @tool
    def convert(amount: float, currency: str) -> str:
        """Convert money."""
        return f"{amount} {currency}"

    bad = AIMessage("", tool_calls=[{"name": "convert", "args": {"amount": "lots"}, "id": "1"}])
    good = AIMessage(
        "", tool_calls=[{"name": "convert", "args": {"amount": 5, "currency": "EUR"}, "id": "2"}]
    )
    cheap = ToolFake(messages=iter([bad, AIMessage("5 EUR it is.")]))
    strong = ToolFake(messages=iter([good]))
    router = Router(CHEAP, STRONG)
    agent = create_agent(
        cheap,
        tools=[convert],
        middleware=[ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)],
    )
    out = agent.invoke({"messages": [HumanMessage("Convert 5 to EUR")]})
    assert out["messages"][-1].content == "5 EUR it is."
    assert router.stats == {"requests": 2, "cheap": 1, "escalated": 1, "cascaded": 1}


def _llm_routes(ledger: Any, tenant: str) -> list[tuple[str | None, str | None]]:
    ledger.flush()
    return [(r["route"], r["model"]) for r in ledger.records(tenant_id=tenant, kind="llm")]


def _route_rows(ledger: Any, tenant: str) -> list[str]:
    return [r["route"] for r in ledger.records(tenant_id=tenant, kind="route")]


def test_router_middleware_llm_rows_carry_the_route(ledger: Any, tenant: str) -> None:
    from graphthrift import CostTagger

    @tool
    def convert(amount: float, currency: str) -> str:
        """Convert money."""
        return f"{amount} {currency}"

    bad = AIMessage("", tool_calls=[{"name": "convert", "args": {"amount": "lots"}, "id": "1"}])
    good = AIMessage(
        "",
        tool_calls=[{"name": "convert", "args": {"amount": 5, "currency": "EUR"}, "id": "2"}],
        response_metadata={"model_name": STRONG},
    )
    cheap = ToolFake(messages=iter([bad, AIMessage("5 EUR it is.")]))
    strong = ToolFake(messages=iter([good]), model_name=STRONG)
    router = Router(CHEAP, STRONG, ledger=ledger)
    agent = create_agent(
        cheap,
        tools=[convert],
        middleware=[ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)],
    )
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    out = agent.invoke({"messages": [HumanMessage("Convert 5 to EUR")]}, config)
    assert out["messages"][-1].content == "5 EUR it is."
    # the rejected cheap call, the strong call that served turn 1, the cheap call of turn 2
    assert _llm_routes(ledger, tenant) == [
        ("cheap", CHEAP),
        ("escalated", STRONG),
        ("cheap", CHEAP),
    ]
    assert _route_rows(ledger, tenant) == ["escalated", "cheap"]


def test_router_middleware_async_llm_rows_carry_the_route(
    store: Any, ledger: Any, tenant: str
) -> None:
    import asyncio

    from graphthrift import CostTagger

    cheap = usage_model("I'm not sure.")
    strong = usage_model("It is 12.", model_name=STRONG)
    router = Router(CHEAP, STRONG, ledger=ledger)
    agent = create_agent(
        cheap, middleware=[ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)]
    )
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}

    async def go() -> Any:
        try:
            return await agent.ainvoke({"messages": [HumanMessage("Months in a year?")]}, config)
        finally:
            await store.async_engine.dispose()

    out = asyncio.run(go())
    assert out["messages"][-1].content == "It is 12."
    assert _llm_routes(ledger, tenant) == [("cheap", CHEAP), ("escalated", STRONG)]


def test_route_model_llm_rows_carry_the_route(ledger: Any, tenant: str) -> None:
    from graphthrift import CostTagger

    router = Router(CHEAP, STRONG, ledger=ledger)
    models = {
        CHEAP: usage_model("I'm not sure."),
        STRONG: usage_model("It is 12.", model_name=STRONG),
    }
    builder = StateGraph(State)
    builder.add_node("route", choose_model(router, models=models))
    builder.add_edge(START, "route")
    builder.add_edge("route", END)
    graph = builder.compile()
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    out = graph.invoke({"messages": [HumanMessage("How many months in a year?")]}, config)
    assert out["route"] == "escalated"
    models[CHEAP] = usage_model("There are 12 months in a year.")
    graph = StateGraph(State)
    graph.add_node("route", choose_model(router, models=models))
    graph.add_edge(START, "route")
    graph.add_edge("route", END)
    out = graph.compile().invoke({"messages": [HumanMessage("Months in a year?")]}, config)
    assert out["route"] == "cheap"
    rows = _llm_routes(ledger, tenant)
    assert rows == [("cheap", CHEAP), ("escalated", STRONG), ("cheap", CHEAP)]
    ledger.flush()
    assert _route_rows(ledger, tenant) == ["escalated", "cheap"]
