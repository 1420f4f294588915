"""Budget adapters on real frameworks: LangGraph nodes, create_agent middleware, LlamaIndex."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from pydantic import Field

from graphthrift.budget import Budget
from graphthrift.errors import BudgetExceeded, UnknownModelPrice
from graphthrift.langgraph.budget import BudgetState, enforce_budget, route_on_budget
from graphthrift.middleware.budget import BudgetMiddleware, ToolBudgetMiddleware

from fakes import usage_model

MODEL = "gpt-4o-mini"


State = BudgetState  # the declared schema the guard needs (issue 11, item 7)


def _graph(budget: Budget, checkpointer: Any = None, **kwargs: Any) -> Any:
    guard = enforce_budget(budget, model=MODEL, **kwargs)
    llm = usage_model("Here you go.", input_tokens=40, output_tokens=20)
    builder = StateGraph(State)
    builder.add_node("guard", guard.guard)
    builder.add_node("model", lambda s: {"messages": [llm.invoke(s["messages"])]})
    builder.add_node("settle", guard.settle)
    builder.add_edge(START, "guard")
    builder.add_conditional_edges("guard", route_on_budget("model"))
    builder.add_edge("model", "settle")
    builder.add_edge("settle", END)
    return builder.compile(checkpointer=checkpointer)


def _spend(budget: Budget, tags: dict[str, str], tokens: int) -> None:
    r = budget.reserve(MODEL, input_tokens=1, max_output_tokens=1, tags=tags)
    budget.settle(r, input_tokens=tokens, output_tokens=0)


def test_langgraph_guard_reserves_and_settles(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 10_000}, max_output_tokens=200)
    graph = _graph(budget)
    out = graph.invoke({"messages": [HumanMessage("hello")]}, {"metadata": {"tenant_id": tenant}})
    assert out["budget_status"] == "ok" and out["budget_reservation"] is None
    held = budget.usage({"tenant_id": tenant})["tenant"]
    assert held["spent_tokens"] == 60 and held["reserved_tokens"] == 0


def test_langgraph_guard_compresses_then_ends(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 1_000}, max_output_tokens=200)
    tags = {"tenant_id": tenant}
    _spend(budget, tags, 600)
    graph = _graph(budget, compressor=lambda msgs: msgs[-1:])
    history = [HumanMessage("old " * 300), AIMessage("ok"), HumanMessage("new question")]
    out = graph.invoke({"messages": history}, {"metadata": tags})
    assert out["budget_steps"] == ["compress"]
    assert [m.content for m in out["messages"]][:1] == ["new question"]
    _spend(budget, tags, 400)
    ended = graph.invoke({"messages": [HumanMessage("more")]}, {"metadata": tags})
    assert ended["budget_status"] == "ended"
    assert "max_tokens" in ended["messages"][-1].content


def test_langgraph_interrupt_asks_a_human(store: Any, tenant: str) -> None:
    budget = Budget(
        store, max_tokens={"tenant": 500}, max_output_tokens=200, ladder=("interrupt", "end")
    )
    tags = {"tenant_id": tenant}
    _spend(budget, tags, 400)
    graph = _graph(budget, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": tenant}, "metadata": tags}
    first = graph.invoke({"messages": [HumanMessage("hi")]}, config)
    assert first["__interrupt__"][0].value["limit_name"] == "max_tokens"
    resumed = graph.invoke(Command(resume=True), config)
    assert resumed["messages"][-1].content == "Here you go."
    assert budget.usage(tags)["tenant"]["spent_tokens"] == 460


def test_langgraph_guard_async_and_unknown_model(store: Any, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 1.0})
    with pytest.raises(UnknownModelPrice):
        enforce_budget(budget, model="no-such-model-anywhere")
    graph = _graph(budget)

    async def go() -> Any:
        try:
            return await graph.ainvoke(
                {"messages": [HumanMessage("hi")]}, {"metadata": {"tenant_id": tenant}}
            )
        finally:
            await store.async_engine.dispose()

    out = asyncio.run(go())
    assert out["budget_status"] == "ok"
    assert budget.usage({"tenant_id": tenant})["tenant"]["spent_usd"] > 0


class ToolFake(type(usage_model())):  # type: ignore[misc]
    """The fake chat model, able to ``bind_tools`` (create_agent binds the agent's tools)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def test_budget_middleware_ends_agent_cleanly(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 600}, max_output_tokens=200)
    tags = {"tenant_id": tenant}
    model = usage_model("Sure.", input_tokens=30, output_tokens=10)
    agent = create_agent(model, middleware=[BudgetMiddleware(budget)])
    out = agent.invoke({"messages": [HumanMessage("hi")]}, {"metadata": tags})
    assert out["messages"][-1].content == "Sure."
    assert budget.usage(tags)["tenant"]["spent_tokens"] == 40
    _spend(budget, tags, 500)
    out = agent.invoke({"messages": [HumanMessage("again")]}, {"metadata": tags})
    assert out["messages"][-1].response_metadata["graphthrift_budget"] == "max_tokens"
    hard = create_agent(
        model,
        middleware=[
            BudgetMiddleware(
                Budget(store, max_tokens={"tenant": 600}, max_output_tokens=200, ladder=())
            )
        ],
    )
    with pytest.raises(BudgetExceeded):
        hard.invoke({"messages": [HumanMessage("again")]}, {"metadata": tags})


def test_budget_middleware_switches_to_cheaper_model(store: Any, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 0.004}, max_output_tokens=300)
    tags = {"tenant_id": tenant}
    r = budget.reserve("gpt-4o", input_tokens=1, max_output_tokens=1, tags=tags)
    budget.settle(r, input_tokens=1000, output_tokens=0)  # 0.0025 of 0.004 spent
    strong = usage_model("strong", model_name="gpt-4o")
    cheap = usage_model("cheap", model_name=MODEL, input_tokens=20, output_tokens=5)
    agent = create_agent(strong, middleware=[BudgetMiddleware(budget, cheaper_model=cheap)])
    out = agent.invoke({"messages": [HumanMessage("x " * 200)]}, {"metadata": tags})
    assert out["messages"][-1].content == "cheap"


def test_tool_budget_caps_calls_per_step() -> None:
    calls: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        calls.append(q)
        return f"found {q}"

    first = AIMessage(
        "", tool_calls=[{"name": "lookup", "args": {"q": str(i)}, "id": f"c{i}"} for i in range(4)]
    )
    model = ToolFake(messages=iter([first, AIMessage("done")]))
    agent = create_agent(
        model, tools=[lookup], middleware=[ToolBudgetMiddleware(max_tool_calls_per_step=2)]
    )
    out = agent.invoke({"messages": [HumanMessage("go")]})
    assert sorted(calls) == ["0", "1"]
    refused = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(refused) == 2 and "2 tool calls per step" in refused[0].content
    with pytest.raises(ValueError):
        ToolBudgetMiddleware(max_tool_calls_per_step=0)


def test_llamaindex_budgeted_llm(store: Any, tenant: str) -> None:
    from llama_index.core.llms import ChatMessage, MockLLM

    from graphthrift.llamaindex.budget import BudgetedLLM

    budget = Budget(store, max_tokens={"tenant": 400})
    llm = BudgetedLLM(
        llm=MockLLM(max_tokens=50), budget=budget, model=MODEL, tags={"tenant_id": tenant}
    )
    reply = llm.chat([ChatMessage(role="user", content="hello there")])
    assert reply.message.content
    assert budget.usage({"tenant_id": tenant})["tenant"]["spent_tokens"] > 0
    assert llm.complete("hi").text is not None
    _spend(budget, {"tenant_id": tenant}, 350)
    with pytest.raises(BudgetExceeded):
        llm.chat([ChatMessage(role="user", content="more")])
    assert budget.usage({"tenant_id": tenant})["tenant"]["reserved_tokens"] == 0


class CapFake(type(usage_model())):  # type: ignore[misc]
    """The fake chat model, recording the max_tokens each call was sent with."""

    seen: list[Any] = Field(default_factory=list)
    max_tokens: int | None = None

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.seen.append(kw.get("max_tokens"))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kw)

    async def _agenerate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        return self._generate(messages, stop=stop, **kw)


def _cap_fake(text: str = "Capped.") -> Any:
    base = usage_model(text, input_tokens=30, output_tokens=10)
    return CapFake(messages=base.messages, usage=base.usage, model_name=MODEL, seen=[])


def test_budget_middleware_caps_output_at_the_reservation(store: Any, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 10_000}, max_output_tokens=77)
    tags = {"tenant_id": tenant}
    model = _cap_fake()
    agent = create_agent(model, middleware=[BudgetMiddleware(budget)])
    agent.invoke({"messages": [HumanMessage("hi")]}, {"metadata": tags})
    assert model.seen == [77]
    # a smaller cap of the model's own is kept (and is what gets reserved)
    model.max_tokens = 20

    async def go() -> Any:
        try:
            return await agent.ainvoke({"messages": [HumanMessage("hi")]}, {"metadata": tags})
        finally:
            await store.async_engine.dispose()

    asyncio.run(go())
    assert model.seen == [77, 20]
    free = create_agent(model, middleware=[BudgetMiddleware(budget, max_tokens_param=None)])
    free.invoke({"messages": [HumanMessage("hi")]}, {"metadata": tags})
    assert model.seen[-1] is None


CapState = BudgetState


def test_langgraph_guard_caps_the_model_node(store: Any, tenant: str) -> None:
    from graphthrift.langgraph.budget import budget_max_tokens

    budget = Budget(store, max_tokens={"tenant": 10_000}, max_output_tokens=64)
    guard = enforce_budget(budget, model=MODEL)
    model = _cap_fake()
    seen_state: list[int | None] = []

    def own_node(state: Any) -> dict[str, Any]:
        seen_state.append(budget_max_tokens(state))
        return {"messages": [guard.capped(model, state).invoke(state["messages"])]}

    for node in (guard.model_node(model), own_node):
        builder = StateGraph(CapState)
        builder.add_node("guard", guard.guard)
        builder.add_node("model", node)
        builder.add_node("settle", guard.settle)
        builder.add_edge(START, "guard")
        builder.add_conditional_edges("guard", route_on_budget("model"))
        builder.add_edge("model", "settle")
        builder.add_edge("settle", END)
        out = builder.compile().invoke(
            {"messages": [HumanMessage("hello")]}, {"metadata": {"tenant_id": tenant}}
        )
        assert out["messages"][-1].content == "Capped."
        assert out["budget_max_tokens"] is None  # cleared by settle
    assert model.seen == [64, 64] and seen_state == [64]
    assert budget_max_tokens({"budget_reservation": {"output_tokens": 9}}) == 9
    assert guard.capped(model, {}) is model


def test_llamaindex_budgeted_llm_caps_output(store: Any, tenant: str) -> None:
    from llama_index.core.llms import ChatMessage, CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    class CapLLM(CustomLLM):
        max_tokens: int | None = None
        seen: list[Any] = Field(default_factory=list)

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name=MODEL)

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
            self.seen.append(kw.get("max_tokens"))
            return CompletionResponse(text="ok")

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
            self.seen.append(kw.get("max_tokens"))
            yield CompletionResponse(text="ok", delta="ok")

    from graphthrift.llamaindex.budget import BudgetedLLM

    inner = CapLLM(seen=[])
    budget = Budget(store, max_tokens={"tenant": 10_000}, max_output_tokens=50)
    llm = BudgetedLLM(llm=inner, budget=budget, tags={"tenant_id": tenant})
    llm.chat([ChatMessage(role="user", content="hello")])
    llm.complete("hi", max_tokens=10)
    list(llm.stream_complete("hi"))
    assert inner.seen == [50, 10, 50]
    assert budget.usage({"tenant_id": tenant})["tenant"]["reserved_tokens"] == 0


def test_llamaindex_budgeted_llm_takes_the_bound_run(store: Any, tenant: str) -> None:
    """Issue 11, item 1: a per-run limit uses the run's own id, never a shared bucket."""
    from llama_index.core.llms import ChatMessage, MockLLM

    from graphthrift.budget import BudgetScopeMissing
    from graphthrift.kernel import bound_run_tags
    from graphthrift.llamaindex.budget import BudgetedLLM

    budget = Budget(store, max_tokens={"run": 400})
    llm = BudgetedLLM(
        llm=MockLLM(max_tokens=20), budget=budget, model=MODEL, tags={"tenant_id": tenant}
    )
    with bound_run_tags({"run_id": f"{tenant}-run"}):
        llm.chat([ChatMessage(role="user", content="hello there")])
    assert budget.usage({"run_id": f"{tenant}-run"})["run"]["spent_tokens"] > 0
    with pytest.raises(BudgetScopeMissing):
        llm.chat([ChatMessage(role="user", content="no run here")])
