"""Router adapters on real frameworks: LangGraph route_model and RouterMiddleware."""

from __future__ import annotations

from typing import Annotated, Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from graphthrift.langgraph.route import route_by_model, route_model
from graphthrift.middleware.route import RouterMiddleware
from graphthrift.route import Router

from fakes import usage_model

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"


class State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    route: str
    route_model: str
    route_reason: str | None
    route_difficulty: float
    route_next: str


def test_route_model_runs_the_cascade_in_one_node() -> None:
    router = Router(CHEAP, STRONG)
    models = {
        CHEAP: usage_model("I'm not sure."),
        STRONG: usage_model("It is 12.", model_name=STRONG),
    }
    builder = StateGraph(State)
    builder.add_node("route", route_model(router, models=models))
    builder.add_edge(START, "route")
    builder.add_edge("route", END)
    out = builder.compile().invoke({"messages": [HumanMessage("How many months in a year?")]})
    assert out["route"] == "escalated" and out["route_reason"] == "confidence"
    assert out["messages"][-1].content == "It is 12."


def test_route_model_with_model_nodes_and_edge_helper(ledger: Any, tenant: str) -> None:
    router = Router(CHEAP, STRONG, ledger=ledger)
    cheap, strong = usage_model(""), usage_model("strong answer", model_name=STRONG)
    builder = StateGraph(State)
    builder.add_node("route", route_model(router))
    builder.add_node("cheap", lambda s: {"messages": [cheap.invoke(s["messages"])]})
    builder.add_node("strong", lambda s: {"messages": [strong.invoke(s["messages"])]})
    builder.add_edge(START, "route")
    builder.add_conditional_edges(
        "route", route_by_model, {CHEAP: "cheap", STRONG: "strong", END: END}
    )
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
        middleware=[RouterMiddleware(router, cheap_model=cheap, strong_model=strong)],
    )
    out = agent.invoke({"messages": [HumanMessage("Convert 5 to EUR")]})
    assert out["messages"][-1].content == "5 EUR it is."
    assert router.stats == {"requests": 2, "cheap": 1, "escalated": 1, "cascaded": 1}
