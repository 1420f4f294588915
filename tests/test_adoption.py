"""One-line adoption: ``default_stack`` under ``create_agent`` and ``wrap_model`` in LangGraph.

Real PostgreSQL (the session store), real ``create_agent`` and ``StateGraph`` runs, and
prompt-recording fake chat models as the LLM.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from graphthrift import Budget, ConfigError, ExactCache, Ledger, SemanticCache, Store, wrap_model
from graphthrift.langchain.wrapped import WrappedChatModel
from graphthrift.middleware import (
    AgentModelRoutingMiddleware,
    BudgetMiddleware,
    CallRecordingMiddleware,
    HistoryPruningMiddleware,
    TenantCacheMiddleware,
    default_stack,
)
from graphthrift.provenance import OWN_MESSAGE_KEY

from fakes import CallLog, RecordingChatModel

QUESTION = "How long does a refund take?"


def _answer(messages: list[BaseMessage], model: str) -> tuple[str, list[Any]]:
    """Answers from the prompt: a tool call for order questions until the tool answered."""
    last = messages[-1]
    if isinstance(last, ToolMessage):
        return f"Your order is {last.content}.", []
    question = str(last.content)
    if "order" in question.lower():
        return "", [("order_status", {"order_id": "A-1"})]
    return f"[{model}] Refunds reach your card in 5 to 7 business days.", []


def _model(log: CallLog, name: str = "gpt-4o") -> RecordingChatModel:
    return RecordingChatModel(model_name=name, reply=_answer, log=log)


@tool
def order_status(order_id: str) -> str:
    """The status of one of the customer's orders."""
    return f"{order_id} shipped"


def _ns() -> str:
    return f"adopt-{uuid.uuid4().hex[:8]}"


def _cache(store: Store, ledger: Ledger | None = None) -> SemanticCache:
    """The default cache with deadlines a shared test machine meets."""
    return SemanticCache(store, namespace=_ns(), ledger=ledger, timeout=5, write_timeout=5)


def _ask(agent: Any, tenant: str | None, question: str = QUESTION, **meta: Any) -> Any:
    metadata = {"feature": "support", **meta}
    if tenant is not None:
        metadata["tenant_id"] = tenant
    return agent.invoke({"messages": [HumanMessage(question)]}, {"metadata": metadata})


# ----------------------------------------------------------------------- default_stack


def test_default_stack_order_and_optional_layers(store: Store) -> None:
    plain = default_stack(store, namespace=_ns())
    assert [type(m) for m in plain] == [
        CallRecordingMiddleware,
        TenantCacheMiddleware,
        HistoryPruningMiddleware,
    ]
    cache = plain[1]
    assert isinstance(cache, TenantCacheMiddleware) and isinstance(cache.cache, SemanticCache)
    full = default_stack(
        store,
        cheap_model=_model(CallLog(), "gpt-4o-mini"),
        budget=Budget(store, max_tokens={"tenant": 10_000}),
    )
    assert [type(m) for m in full] == [
        CallRecordingMiddleware,
        TenantCacheMiddleware,
        HistoryPruningMiddleware,
        AgentModelRoutingMiddleware,
        BudgetMiddleware,  # inside the router: each call reserved at the model called
    ]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"cache": False, "namespace": "x"}, "namespace"),
        ({"history": 0}, "history"),
        ({"cache": "yes"}, "cache"),
        ({"budget": {"tenant": 1.0}}, "budget"),
    ],
)
def test_default_stack_rejects_conflicting_arguments(
    store: Store, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ConfigError) as err:
        default_stack(store, **kwargs)
    assert err.value.name == name


def test_default_stack_rejects_parts_on_another_store(store: Store) -> None:
    other = Store.__new__(Store)  # a distinct Store object: never connected
    cache = ExactCache.__new__(ExactCache)
    cache.store = other
    with pytest.raises(ConfigError) as err:
        default_stack(store, cache=cache)
    assert err.value.name == "cache"


def test_default_stack_second_question_hits_the_cache(store: Store, tenant: str) -> None:
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    agent = create_agent(
        _model(log),
        [order_status],
        middleware=default_stack(store, ledger=ledger, cache=_cache(store, ledger)),
    )
    first = _ask(agent, tenant)["messages"][-1]
    second = _ask(agent, tenant)["messages"][-1]
    assert second.content == first.content
    assert len(log.calls) == 1  # the second answer came from the cache
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    llm = [r for r in rows if r["kind"] == "llm"]
    hits = [r for r in rows if r["kind"] == "cache_hit"]
    assert len(llm) == 1 and len(hits) == 1
    assert llm[0]["feature"] == "support" and llm[0]["node"] == "model"
    assert llm[0]["input_tokens"] == log.calls[0]["usage"]["input_tokens"]
    ledger.close()


def test_default_stack_async_agent_hits_the_cache_and_books_calls(
    store: Store, tenant: str
) -> None:
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    agent = create_agent(
        _model(log), [], middleware=default_stack(store, ledger=ledger, cache=_cache(store, ledger))
    )
    config: Any = {"metadata": {"tenant_id": tenant}}

    async def run() -> list[str]:
        out = []
        for _ in range(2):
            state = await agent.ainvoke({"messages": [HumanMessage(QUESTION)]}, config)
            out.append(str(state["messages"][-1].content))
        return out

    first_answer, second_answer = asyncio.run(run())
    assert first_answer == second_answer and len(log.calls) == 1
    ledger.flush()
    kinds = sorted(r["kind"] for r in ledger.records(tenant_id=tenant))
    assert kinds == ["cache_hit", "llm"]
    ledger.close()


def test_default_stack_keeps_tenants_apart(store: Store, tenant: str) -> None:
    log = CallLog()
    agent = create_agent(_model(log), [], middleware=default_stack(store, cache=_cache(store)))
    _ask(agent, tenant)
    _ask(agent, f"{tenant}-other")
    assert len(log.calls) == 2  # the other tenant is never served the first one's answer
    _ask(agent, None)
    _ask(agent, None)
    assert len(log.calls) == 4  # no tenant: no shared anonymous cache


def test_default_stack_user_tagger_books_each_call_once(store: Store, tenant: str) -> None:
    from graphthrift import CostTagger

    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    agent = create_agent(
        _model(log), [], middleware=default_stack(store, ledger=ledger, cache=False)
    )
    agent.invoke(
        {"messages": [HumanMessage(QUESTION)]},
        {"metadata": {"tenant_id": tenant}, "callbacks": [CostTagger(ledger)]},
    )
    ledger.flush()
    assert len([r for r in ledger.records(tenant_id=tenant) if r["kind"] == "llm"]) == 1
    ledger.close()


def test_default_stack_budget_refuses_over_limit(store: Store, tenant: str) -> None:
    log = CallLog()
    cache = _cache(store)
    budget = Budget(store, max_tokens={"tenant": 30}, ladder=["end"])
    agent = create_agent(
        _model(log), [], middleware=default_stack(store, budget=budget, cache=cache)
    )
    answer = _ask(agent, tenant)["messages"][-1]
    assert log.calls == []  # refused before the model was called
    assert answer.response_metadata[OWN_MESSAGE_KEY] == "budget"
    # the refusal was not cached: with room in the budget the model answers
    roomy = create_agent(_model(log), [], middleware=default_stack(store, cache=cache))
    assert "Refunds" in _ask(roomy, tenant)["messages"][-1].content
    assert len(log.calls) == 1


def test_default_stack_routes_to_the_cheap_model(store: Store, tenant: str) -> None:
    log = CallLog()
    cheap = _model(log, "gpt-4o-mini")
    agent = create_agent(
        _model(log),
        [],
        middleware=default_stack(store, cheap_model=cheap, cache=False, history=False),
    )
    answer = _ask(agent, tenant)["messages"][-1]
    assert [c["model"] for c in log.calls] == ["gpt-4o-mini"]
    assert answer.content.startswith("[gpt-4o-mini]")


# ----------------------------------------------------------------------- wrap_model


def _graph(model: Any, tools: list[Any] | None = None) -> Any:
    """A plain LangGraph graph whose node calls ``model.invoke`` (with a tool loop)."""
    bound = model.bind_tools(tools) if tools else model

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    from langchain_core.runnables import RunnableLambda

    builder = StateGraph(MessagesState)
    builder.add_node("agent", RunnableLambda(agent, afunc=aagent))
    builder.add_edge(START, "agent")
    if tools:
        builder.add_node("tools", ToolNode(tools))
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
    else:
        builder.add_edge("agent", END)
    return builder.compile()


def test_wrap_model_is_a_chat_model_and_checks_its_arguments(store: Store) -> None:
    log = CallLog()
    wrapped = wrap_model(_model(log), cache=_cache(store))
    assert isinstance(wrapped, WrappedChatModel) and wrapped.model_name == "gpt-4o"
    with pytest.raises(ConfigError) as err:
        wrap_model(_model(log), router=object())  # type: ignore[arg-type]
    assert err.value.name == "router"
    with pytest.raises(ConfigError):
        wrap_model(_model(log), cache=True)  # the default cache needs a store
    with pytest.raises(ConfigError):
        wrap_model(wrapped)


def test_wrap_model_in_a_stategraph_node_caches_per_tenant(store: Store, tenant: str) -> None:
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    app = _graph(wrap_model(_model(log), ledger=ledger, cache=_cache(store, ledger)))
    config = {"metadata": {"tenant_id": tenant, "feature": "faq"}}
    first = app.invoke({"messages": [("user", QUESTION)]}, config)["messages"][-1]
    second = app.invoke({"messages": [("user", QUESTION)]}, config)["messages"][-1]
    assert second.content == first.content and len(log.calls) == 1
    other = {"metadata": {"tenant_id": f"{tenant}-b"}}
    app.invoke({"messages": [("user", QUESTION)]}, other)
    assert len(log.calls) == 2  # another tenant: the model again
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert sorted(r["kind"] for r in rows) == ["cache_hit", "llm"]
    [llm] = [r for r in rows if r["kind"] == "llm"]
    assert llm["feature"] == "faq" and llm["node"] == "agent" and llm["model"] == "gpt-4o"
    ledger.close()


def test_wrap_model_streams_and_awaits_the_cached_answer(store: Store, tenant: str) -> None:
    log = CallLog()
    wrapped = wrap_model(_model(log), cache=_cache(store))
    config: Any = {"metadata": {"tenant_id": tenant}}
    streamed = "".join(str(c.content) for c in wrapped.stream([HumanMessage(QUESTION)], config))
    assert "Refunds" in streamed and len(log.calls) == 1
    hit = "".join(str(c.content) for c in wrapped.stream([HumanMessage(QUESTION)], config))
    assert hit == streamed and len(log.calls) == 1  # a hit streams the cached answer

    async def run() -> tuple[str, str]:
        answer = await wrapped.ainvoke([HumanMessage(QUESTION)], config)
        chunks = [c async for c in wrapped.astream([HumanMessage(QUESTION)], config)]
        return str(answer.content), "".join(str(c.content) for c in chunks)

    awaited, astreamed = asyncio.run(run())
    assert awaited == streamed == astreamed and len(log.calls) == 1


def test_wrap_model_in_graph_stream_mode_messages_shows_one_answer(
    store: Store, tenant: str
) -> None:
    log = CallLog()
    app = _graph(wrap_model(_model(log), cache=_cache(store)))
    config = {"metadata": {"tenant_id": tenant}}
    for _ in range(2):
        chunks = [
            m
            for m, _meta in app.stream(
                {"messages": [("user", QUESTION)]}, config, stream_mode="messages"
            )
        ]
        text = "".join(str(m.content) for m in chunks)
        assert text.count("Refunds reach your card") == 1  # the inner call stays quiet
    assert len(log.calls) == 1


def test_wrap_model_with_bind_tools_in_a_tool_loop(store: Store, tenant: str) -> None:
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    wrapped = wrap_model(_model(log), ledger=ledger, cache=_cache(store, ledger))
    app = _graph(wrapped, [order_status])
    out = app.invoke(
        {"messages": [("user", "Where is my order A-1?")]}, {"metadata": {"tenant_id": tenant}}
    )
    messages = out["messages"]
    assert (
        isinstance(messages[1], AIMessage) and messages[1].tool_calls[0]["name"] == "order_status"
    )
    assert isinstance(messages[2], ToolMessage) and messages[2].content == "A-1 shipped"
    assert messages[-1].content == "Your order is A-1 shipped."
    assert len(log.calls) == 2 and log.calls[0]["model"] == "gpt-4o"
    ledger.flush()
    assert len([r for r in ledger.records(tenant_id=tenant) if r["kind"] == "llm"]) == 2
    ledger.close()


def test_wrap_model_never_stores_a_budget_stop(store: Store, tenant: str) -> None:
    log = CallLog()
    cache = ExactCache(store, namespace=_ns(), timeout=5, write_timeout=5)
    refused = wrap_model(
        _model(log), cache=cache, budget=Budget(store, max_tokens={"tenant": 30}, ladder=["end"])
    )
    config: Any = {"metadata": {"tenant_id": tenant}}
    stop = refused.invoke([HumanMessage(QUESTION)], config)
    assert stop.response_metadata[OWN_MESSAGE_KEY] == "budget" and log.calls == []
    answer = wrap_model(_model(log), cache=cache).invoke([HumanMessage(QUESTION)], config)
    assert "Refunds" in str(answer.content) and len(log.calls) == 1


def test_wrap_model_budget_settles_at_the_model_called(store: Store, tenant: str) -> None:
    log = CallLog()
    budget = Budget(store, max_usd={"tenant": 5.0})
    wrapped = wrap_model(
        _model(log), cache=False, budget=budget, cheap_model=_model(log, "gpt-4o-mini")
    )
    wrapped.invoke([HumanMessage(QUESTION)], {"metadata": {"tenant_id": tenant}})
    [call] = log.calls
    assert call["model"] == "gpt-4o-mini"
    from graphthrift.ledger import PriceBook

    usage = call["usage"]
    expected = PriceBook().cost("gpt-4o-mini", usage["input_tokens"], usage["output_tokens"])
    spent = budget.usage({"tenant_id": tenant})["tenant"]
    assert spent["spent_usd"] == pytest.approx(expected, rel=1e-6)
    assert spent["reserved_usd"] == 0


def test_wrap_model_with_the_users_cost_tagger_books_each_call_once(
    store: Store, tenant: str
) -> None:
    from graphthrift import CostTagger

    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    app = _graph(wrap_model(_model(log), ledger=ledger, cache=False))
    config = {"metadata": {"tenant_id": tenant}, "callbacks": [CostTagger(ledger)]}
    app.invoke({"messages": [("user", QUESTION)]}, config)
    ledger.flush()
    [llm] = [r for r in ledger.records(tenant_id=tenant) if r["kind"] == "llm"]
    assert llm["model"] == "gpt-4o" and llm["input_tokens"] == log.calls[0]["usage"]["input_tokens"]
    ledger.close()


def test_wrap_model_cache_keeps_answers_to_their_tools_and_settings(
    store: Store, tenant: str
) -> None:
    class ToolAwareModel(RecordingChatModel):
        """Calls a tool only when tools are bound, as a real model does."""

        def _answer(self, messages: list[BaseMessage], run_manager: Any) -> AIMessage:
            message = super()._answer(messages, run_manager)
            if self.tools:
                return message
            return message.model_copy(
                update={"tool_calls": [], "content": "I cannot look orders up."}
            )

    log = CallLog()
    model = ToolAwareModel(model_name="gpt-4o", reply=_answer, log=log)
    wrapped = wrap_model(model, cache=_cache(store))
    config: Any = {"metadata": {"tenant_id": tenant}}
    question = [HumanMessage("Where is my order A-1?")]
    plain = wrapped.invoke(question, config)
    assert not plain.tool_calls and len(log.calls) == 1  # no tools bound: a text answer
    called = wrapped.bind_tools([order_status]).invoke(question, config)
    # the text answer was given without the tools: with them the model is asked again
    assert len(log.calls) == 2 and called.tool_calls[0]["name"] == "order_status"
    wrapped.bind(temperature=0.0).invoke(question, config)
    assert len(log.calls) == 3  # other model settings, another answer
    wrapped.invoke(question, config)
    assert len(log.calls) == 3  # the same call again: a hit
