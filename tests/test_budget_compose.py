"""Budget, router and cache composed in real LangGraph graphs and create_agent agents.

Issue 11 items 1 (run scopes from the run itself), 7 (declared state schemas), 8 (budget and
router compose: settle at the model actually called, every call of an escalation, the
reserved cap) and 10 (BudgetMiddleware behind the router, per-run tool budget, node tags).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import Field

from graphthrift import CostTagger
from graphthrift.budget import Budget
from graphthrift.errors import StateSchemaError
from graphthrift.langgraph import BudgetState, RouteState
from graphthrift.langgraph.budget import enforce_budget, route_on_budget
from graphthrift.langgraph.route import choose_model
from graphthrift.ledger import default_price_book
from graphthrift.middleware.budget import BudgetMiddleware, ToolBudgetMiddleware
from graphthrift.middleware.route import ModelRoutingMiddleware
from graphthrift.route import Router

from fakes import usage_model

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
PRICES = default_price_book()


class ComposedState(BudgetState, RouteState):
    """A graph with a budget guard and a router."""


class CapFake(type(usage_model())):  # type: ignore[misc]
    """The fake chat model, recording the max_tokens each call was sent with."""

    seen: list[Any] = Field(default_factory=list)

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.seen.append(kw.get("max_tokens"))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kw)

    async def _agenerate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        return self._generate(messages, stop=stop, **kw)

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def cap_fake(text: str, name: str, inp: int, out: int) -> Any:
    base = usage_model(text, input_tokens=inp, output_tokens=out, model_name=name)
    return CapFake(messages=base.messages, usage=base.usage, model_name=name, seen=[])


def fresh_model(text: str, inp: int, out: int, name: str = CHEAP, n: int = 20) -> Any:
    """A fake model answering with a new message each call (its own id, as providers do)."""
    usage = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    answers = [
        AIMessage(text, usage_metadata=usage, response_metadata={"model_name": name})  # type: ignore[arg-type]
        for _ in range(n)
    ]
    return type(usage_model())(messages=iter(answers), usage=usage, model_name=name)


def _ledger_cost(ledger: Any, tenant: str) -> float:
    ledger.flush()
    return sum(r["cost_usd"] or 0.0 for r in ledger.records(tenant_id=tenant, kind="llm"))


# -- declared state schemas (issue 11, item 7) -------------------------------------------------


def test_guard_on_plain_messages_state_names_budget_state(store: Any, tenant: str) -> None:
    guard = enforce_budget(Budget(store, max_tokens={"tenant": 10_000}), model=CHEAP)
    builder = StateGraph(MessagesState)
    builder.add_node("guard", guard.guard)
    builder.add_edge(START, "guard")
    builder.add_edge("guard", END)
    with pytest.raises(StateSchemaError, match="BudgetState") as info:
        builder.compile().invoke(
            {"messages": [HumanMessage("hi")]}, {"metadata": {"tenant_id": tenant}}
        )
    assert info.value.node == "enforce_budget"
    with pytest.raises(StateSchemaError, match="BudgetState"):
        guard.settle.invoke({"messages": []})


def test_route_model_on_plain_messages_state_names_route_state() -> None:
    router = Router(CHEAP, STRONG)
    builder = StateGraph(MessagesState)
    builder.add_node(
        "route", choose_model(router, models={CHEAP: usage_model(), STRONG: usage_model()})
    )
    builder.add_edge(START, "route")
    builder.add_edge("route", END)
    with pytest.raises(StateSchemaError, match="RouteState"):
        builder.compile().invoke({"messages": [HumanMessage("hi")]})


# -- run scope from the run itself (issue 11, item 1) ------------------------------------------


def _looping_graph(budget: Budget, calls_per_run: int, checkpointer: Any = None) -> Any:
    """guard -> model -> settle, looping until the run made ``calls_per_run`` calls."""
    guard = enforce_budget(budget, model=CHEAP)
    llm = fresh_model("step", 100, 50)
    builder = StateGraph(BudgetState)
    builder.add_node("guard", guard.guard)
    builder.add_node("model", lambda s: {"messages": [llm.invoke(s["messages"])]})
    builder.add_node("settle", guard.settle)
    builder.add_edge(START, "guard")
    builder.add_conditional_edges("guard", route_on_budget("model"))
    builder.add_edge("model", "settle")

    def again(state: Any) -> str:
        answers = 0
        for m in reversed(state["messages"]):
            if isinstance(m, HumanMessage):
                break
            answers += 1
        return "guard" if answers < calls_per_run else END

    builder.add_conditional_edges("settle", again, {"guard": "guard", END: END})
    return builder.compile(checkpointer=checkpointer)


def test_langgraph_run_limit_is_per_invocation(store: Any, tenant: str) -> None:
    # a run may spend 340 tokens; each call spends 150 and reserves its prompt + 50
    budget = Budget(store, max_tokens={"run": 340}, max_output_tokens=50)
    graph = _looping_graph(budget, calls_per_run=3, checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": tenant}, "metadata": {"tenant_id": tenant}}
    first = graph.invoke({"messages": [HumanMessage("go")]}, config)
    assert first["budget_status"] == "ended"  # the third call would pass the run's 340
    assert [m.content for m in first["messages"]][1:3] == ["step", "step"]
    run = first["budget_run"]["run_id"]
    assert budget.usage({"run_id": run})["run"]["spent_tokens"] == 300
    # a new turn on the same thread is a new run; so is a run on another thread
    second = graph.invoke({"messages": [HumanMessage("again")]}, config)
    assert second["budget_run"]["run_id"] != run
    assert [m.content for m in second["messages"]][-3:-1] == ["step", "step"]
    other = _looping_graph(budget, calls_per_run=2).invoke(
        {"messages": [HumanMessage("go")]}, {"metadata": {"tenant_id": tenant}}
    )
    assert other["budget_status"] == "ok"


def test_metadata_run_id_wins(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"run": 10_000}, max_output_tokens=50)
    graph = _looping_graph(budget, calls_per_run=1)
    run = f"{tenant}-explicit"
    graph.invoke({"messages": [HumanMessage("go")]}, {"metadata": {"run_id": run}})
    assert budget.usage({"run_id": run})["run"]["spent_tokens"] == 150


def test_agent_run_limit_is_per_invocation(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"run": 300}, max_output_tokens=50)
    model = fresh_model("Sure.", 100, 50)
    agent = create_agent(model, middleware=[BudgetMiddleware(budget)], checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": tenant}, "metadata": {"tenant_id": tenant}}
    for turn in range(4):  # every run spends 150 of its own 300
        out = agent.invoke({"messages": [HumanMessage(f"turn {turn}")]}, config)
        assert out["messages"][-1].content == "Sure."
    fresh = create_agent(
        model,
        middleware=[BudgetMiddleware(Budget(store, max_tokens={"run": 300}, max_output_tokens=50))],
    )
    assert fresh.invoke({"messages": [HumanMessage("hi")]})["messages"][-1].content == "Sure."


# -- budget and router compose (issue 11, item 8) ----------------------------------------------


def _guarded_router_graph(budget: Budget, router: Router, models: dict[str, Any]) -> Any:
    guard = enforce_budget(budget, model=STRONG)
    builder = StateGraph(ComposedState)
    builder.add_node("guard", guard.guard)
    builder.add_node("route", choose_model(router, models=models))
    builder.add_node("settle", guard.settle)
    builder.add_edge(START, "guard")
    builder.add_conditional_edges("guard", route_on_budget("route"))
    builder.add_edge("route", "settle")
    builder.add_edge("settle", END)
    return builder.compile()


def test_guard_settles_every_routed_call_at_its_model(store: Any, ledger: Any, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=64)
    router = Router(CHEAP, STRONG, ledger=ledger)
    models = {
        CHEAP: cap_fake("I'm not sure.", CHEAP, 400, 30),
        STRONG: cap_fake("It is 12.", STRONG, 400, 20),
    }
    graph = _guarded_router_graph(budget, router, models)
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    out = graph.invoke({"messages": [HumanMessage("How many months in a year?")]}, config)
    assert out["route"] == "escalated" and out["route_calls"] == []
    models[CHEAP] = cap_fake("There are 12.", CHEAP, 300, 10)
    graph = _guarded_router_graph(budget, router, models)
    graph.invoke({"messages": [HumanMessage("Months in a year?")]}, config)
    expected = (
        PRICES.cost(CHEAP, 400, 30) + PRICES.cost(STRONG, 400, 20) + PRICES.cost(CHEAP, 300, 10)
    )  # type: ignore[operator]
    spent = budget.usage({"tenant_id": tenant})["tenant"]["spent_usd"]
    assert spent == pytest.approx(expected)
    assert spent == pytest.approx(_ledger_cost(ledger, tenant))
    # choose_model kept to the output the guard reserved
    assert models[STRONG].seen == [64] and models[CHEAP].seen == [64]
    # route rows carry the node they ran in
    rows = ledger.records(tenant_id=tenant, kind="route")
    assert {r["node"] for r in rows} == {"route"}


def test_cached_answer_releases_the_reservation(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 10_000}, max_output_tokens=64)
    guard = enforce_budget(budget, model=CHEAP)
    hit = AIMessage("cached", response_metadata={"graphthrift_cache": {"kind": "exact"}})
    builder = StateGraph(BudgetState)
    builder.add_node("guard", guard.guard)
    builder.add_node("cache", lambda s: {"messages": [hit]})
    builder.add_node("settle", guard.settle)
    builder.add_edge(START, "guard")
    builder.add_edge("guard", "cache")
    builder.add_edge("cache", "settle")
    builder.add_edge("settle", END)
    builder.compile().invoke(
        {"messages": [HumanMessage("hi")]}, {"metadata": {"tenant_id": tenant}}
    )
    held = budget.usage({"tenant_id": tenant})["tenant"]
    assert held["spent_tokens"] == 0 and held["reserved_tokens"] == 0


@pytest.mark.parametrize("budget_outside", [True, False])
def test_budget_middleware_with_router_books_what_the_ledger_books(
    store: Any, ledger: Any, tenant: str, budget_outside: bool
) -> None:
    cheap = usage_model("I'm not sure.", input_tokens=200, output_tokens=30)
    strong = usage_model("It is 12.", input_tokens=200, output_tokens=20, model_name=STRONG)
    cheap.model_name = ""  # a model that does not tell its name: the router's does
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=64)
    router = Router(CHEAP, STRONG, ledger=ledger)
    routing = ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)
    budgeting = BudgetMiddleware(budget, model=CHEAP)
    order = [budgeting, routing] if budget_outside else [routing, budgeting]
    agent = create_agent(cheap, middleware=order)
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    out = agent.invoke({"messages": [HumanMessage("Months in a year?")]}, config)
    assert out["messages"][-1].content == "It is 12."
    expected = PRICES.cost(CHEAP, 200, 30) + PRICES.cost(STRONG, 200, 20)  # type: ignore[operator]
    spent = budget.usage({"tenant_id": tenant})["tenant"]
    assert spent["spent_usd"] == pytest.approx(expected)
    assert spent["reserved_usd"] == pytest.approx(0.0)
    assert spent["spent_usd"] == pytest.approx(_ledger_cost(ledger, tenant))


# -- per-run tool budget (issue 11, item 10) ---------------------------------------------------


def test_tool_budget_per_run(store: Any) -> None:
    calls: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        calls.append(q)
        return f"found {q}"

    def step(i: int) -> AIMessage:
        return AIMessage(
            "",
            tool_calls=[
                {"name": "lookup", "args": {"q": f"{i}{j}"}, "id": f"c{i}{j}"} for j in range(2)
            ],
        )

    script = [step(0), step(1), step(2), AIMessage("done"), step(3), AIMessage("done again")]
    model = CapFake(messages=iter(script), seen=[])
    agent = create_agent(
        model,
        tools=[lookup],
        middleware=[ToolBudgetMiddleware(max_tool_calls_per_run=3)],
        checkpointer=InMemorySaver(),
    )
    config: Any = {"configurable": {"thread_id": "tools-per-run"}}
    out = agent.invoke({"messages": [HumanMessage("go")]}, config)
    assert sorted(calls) == ["00", "01", "10"]
    refused = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(refused) == 3 and "3 tool calls per run" in refused[0].content
    agent.invoke({"messages": [HumanMessage("next run")]}, config)
    assert sorted(calls[3:]) == ["30", "31"]  # a new run has its own allowance


def test_tool_budget_per_run_async() -> None:
    calls: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        calls.append(q)
        return q

    first = AIMessage(
        "", tool_calls=[{"name": "lookup", "args": {"q": str(j)}, "id": f"a{j}"} for j in range(3)]
    )
    model = CapFake(messages=iter([first, AIMessage("done")]), seen=[])
    agent = create_agent(
        model, tools=[lookup], middleware=[ToolBudgetMiddleware(max_tool_calls_per_run=2)]
    )
    asyncio.run(agent.ainvoke({"messages": [HumanMessage("go")]}))
    assert sorted(calls) == ["0", "1"]


def test_budget_middleware_on_a_model_without_a_name(store: Any, tenant: str) -> None:
    """Issue 11, item 10: a token budget needs no model name; a cost budget says what to pass."""
    model = fresh_model("Sure.", 40, 10)
    model.model_name = ""
    tags = {"tenant_id": tenant}
    tokens = Budget(store, max_tokens={"tenant": 10_000}, max_output_tokens=50)
    agent = create_agent(model, middleware=[BudgetMiddleware(tokens)])
    assert agent.invoke({"messages": [HumanMessage("hi")]}, {"metadata": tags})
    assert tokens.usage(tags)["tenant"]["spent_tokens"] == 50
    cost = Budget(store, max_usd={"tenant": 1.0})
    agent = create_agent(model, middleware=[BudgetMiddleware(cost)])
    with pytest.raises(ValueError, match="model="):
        agent.invoke({"messages": [HumanMessage("hi")]}, {"metadata": tags})


def test_nul_in_a_tenant_id_through_budget_guard_is_a_clear_error(store: Any) -> None:
    """Issue 12, item 8: not a raw DataError from the database."""
    graph = _looping_graph(Budget(store, max_usd={"tenant": 1.0}), calls_per_run=1)
    with pytest.raises(ValueError, match="tenant_id contains a NUL"):
        graph.invoke({"messages": [HumanMessage("go")]}, {"metadata": {"tenant_id": "a\x00b"}})


def test_router_middleware_route_rows_carry_the_node(ledger: Any, tenant: str) -> None:
    """Issue 11, item 10: route rows had node=None."""
    cheap = usage_model("There are 12 months.")
    strong = usage_model("12.", model_name=STRONG)
    router = Router(CHEAP, STRONG, ledger=ledger)
    agent = create_agent(
        cheap, middleware=[ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)]
    )
    agent.invoke(
        {"messages": [HumanMessage("Months in a year?")]}, {"metadata": {"tenant_id": tenant}}
    )
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="route")
    assert rows and {r["node"] for r in rows} == {"model"}


class CapIgnoringFake(CapFake):
    """Writes 20x the max_tokens it is sent (a provider that does not enforce the cap)."""

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        self.seen.append(kw.get("max_tokens"))
        cap = kw.get("max_tokens") or 50
        usage = {"input_tokens": 40, "output_tokens": cap * 20, "total_tokens": 40 + cap * 20}
        answer = AIMessage(
            "long answer", usage_metadata=usage, response_metadata={"model_name": CHEAP}
        )  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=answer)])


def test_agents_with_a_cap_ignoring_model_under_16_way_concurrency(store: Any, tenant: str) -> None:
    """Issue 12, item 9, through create_agent: the documented bound holds and, once spend
    passed the limit, every further call is refused."""
    limit = 0.004
    budget = Budget(store, max_usd={"tenant": limit}, max_output_tokens=50)
    model = CapIgnoringFake(messages=iter([]), seen=[])
    agent = create_agent(model, middleware=[BudgetMiddleware(budget)])
    tags = {"tenant_id": tenant}
    one_call = PRICES.cost(CHEAP, 40, 50 * 20)

    async def main() -> list[Any]:
        gate = asyncio.Semaphore(16)  # 16 runs in flight at any time

        async def one(i: int) -> Any:
            async with gate:
                return await agent.ainvoke(
                    {"messages": [HumanMessage(f"q{i}")]}, {"metadata": tags}
                )

        try:
            return await asyncio.gather(*(one(i) for i in range(48)))
        finally:
            await store.async_engine.dispose()

    outs = asyncio.run(main())
    answered = sum(o["messages"][-1].content == "long answer" for o in outs)
    stopped = sum("graphthrift_budget" in o["messages"][-1].response_metadata for o in outs)
    assert answered + stopped == 48 and answered > 0 and stopped > 0
    held = budget.usage(tags)["tenant"]
    assert held["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
    assert held["spent_usd"] <= limit + 16 * one_call + 1e-12  # type: ignore[operator]
    assert model.seen and set(model.seen) == {50}  # every call was sent its reserved cap
    late = agent.invoke({"messages": [HumanMessage("one more")]}, {"metadata": tags})
    assert "graphthrift_budget" in late["messages"][-1].response_metadata
