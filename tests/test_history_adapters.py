"""History pruning in real runtimes: a LangGraph StateGraph with a checkpointer, langchain's
create_agent with the middleware, llama_index memory, and the ledger for summary calls."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from graphthrift.history import SUMMARY_ID, HistoryPruner, HistoryState
from graphthrift.langgraph.history import HistoryMessagesState, summarize_history
from graphthrift.summarize import ChatModelSummarizer, ExtractiveSummarizer
from graphthrift.text import count_messages, to_messages

from fakes import usage_model

BUDGET = 420


class AgentModel(GenericFakeChatModel):
    """A fake tool-calling chat model: a lookup after each user message, then an answer.

    It records every prompt it receives, which is what a provider would bill.
    """

    seen: list[list[BaseMessage]]
    messages: Any = iter(())

    def bind_tools(self, tools: Any, **kwargs: Any) -> AgentModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        n = len(self.seen)
        if messages[-1].type == "human":
            reply = AIMessage(
                content="",
                tool_calls=[
                    {
                        "name": "lookup",
                        "args": {"order": f"A-{n}00"},
                        "id": f"call-{n}",
                        "type": "tool_call",
                    }
                ],
            )
        else:
            reply = AIMessage(
                content=f"Order shipped to Berlin; tracking number TRK-{n}, arriving May {n % 28 + 1}th."
            )
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def lookup(order: str) -> str:
    """Look an order up."""
    return json.dumps(
        {"order": order, "status": "shipped", "city": "Berlin", "carrier": "DHL", "eta": "May 3rd"}
    )


def user_turn(i: int) -> HumanMessage:
    return HumanMessage(
        content=f"Turn {i}: where is order A-{i}00? My customer id is CU-{i:04d} and I live in Lisbon."
    )


def key(m: BaseMessage) -> tuple[str, str, str]:
    return (
        m.type,
        str(m.content),
        json.dumps(getattr(m, "tool_calls", []), sort_keys=True, default=str),
    )


def check_prompt(prompt: Sequence[BaseMessage], budget: int = BUDGET) -> None:
    """What the model was sent: within budget, tool pairs whole, no orphan opening."""
    assert count_messages(prompt).tokens <= budget
    calls = {c["id"] for m in prompt if isinstance(m, AIMessage) for c in m.tool_calls}
    results = {m.tool_call_id for m in prompt if isinstance(m, ToolMessage)}
    assert results <= calls, "a ToolMessage without its AI tool call"
    assert calls <= results, "an AI tool call without its ToolMessage"
    first = next(m for m in prompt if not isinstance(m, SystemMessage) and m.id != SUMMARY_ID)
    assert not isinstance(first, ToolMessage)


def prefix_breaks(prompts: list[list[BaseMessage]]) -> int:
    breaks = 0
    for prev, cur in itertools.pairwise(prompts):
        if [key(m) for m in cur[: len(prev)]] != [key(m) for m in prev]:
            breaks += 1
    return breaks


# ---------------------------------------------------------------- LangGraph


def build_graph(mode: str, model: AgentModel, saver: InMemorySaver, **kwargs: Any) -> Any:
    def agent(state: dict[str, Any]) -> dict[str, Any]:
        prompt = state["llm_input_messages"] if mode == "view" else state["messages"]
        return {"messages": [model.invoke(prompt)]}

    builder = StateGraph(HistoryMessagesState)
    builder.add_node("prune", summarize_history(max_tokens=BUDGET, mode=mode, **kwargs))  # type: ignore[arg-type]
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([lookup]))
    builder.add_edge(START, "prune")
    builder.add_edge("prune", "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "prune")
    return builder.compile(checkpointer=saver)


def test_langgraph_view_mode_keeps_messages_and_survives_the_checkpointer() -> None:
    model = AgentModel(seen=[])
    saver = InMemorySaver()
    graph = build_graph("view", model, saver)
    config = {"configurable": {"thread_id": "view-1"}}
    graph.invoke({"messages": [SystemMessage(content="You track orders."), user_turn(0)]}, config)  # type: ignore[arg-type]
    for i in range(1, 12):
        graph.invoke({"messages": [user_turn(i)]}, config)  # type: ignore[arg-type]
    values = graph.get_state(config).values
    assert len(values["messages"]) == 1 + 12 * 4  # nothing removed
    state = HistoryState.from_dict(values["history_state"])
    assert state.summarizations >= 2 and "A-" in state.summary
    for prompt in model.seen:
        check_prompt(prompt)
    assert prefix_breaks(model.seen) == state.summarizations  # the prefix moves only on a fold

    # A new process: a freshly compiled graph on the same checkpointer resumes the thread
    # with the same boundary, so its first prompt extends the last one.
    resumed = AgentModel(seen=[])
    graph2 = build_graph("view", resumed, saver)
    before = len(model.seen)
    graph2.invoke({"messages": [user_turn(99)]}, config)  # type: ignore[arg-type]
    assert len(model.seen) == before
    after = HistoryState.from_dict(graph2.get_state(config).values["history_state"])
    if after.summarizations == state.summarizations:
        assert [key(m) for m in resumed.seen[0][: len(model.seen[-1])]] == [
            key(m) for m in model.seen[-1]
        ]
    for prompt in resumed.seen:
        check_prompt(prompt)


def test_langgraph_replace_mode_rewrites_messages_with_one_summary() -> None:
    model = AgentModel(seen=[])
    graph = build_graph("replace", model, InMemorySaver())
    config = {"configurable": {"thread_id": "replace-1"}}
    for i in range(12):
        graph.invoke({"messages": [user_turn(i)]}, config)  # type: ignore[arg-type]
    values = graph.get_state(config).values
    messages = values["messages"]
    assert len(messages) < 12 * 4
    summaries = [m for m in messages if m.id == SUMMARY_ID]
    assert (
        len(summaries) == 1
        and messages[0].id == SUMMARY_ID
        and isinstance(messages[0], HumanMessage)  # the default summary role is "user"
    )
    check_prompt(messages, BUDGET + 200)  # the stored thread itself holds whole tool pairs
    for prompt in model.seen:
        check_prompt(prompt)
    state = HistoryState.from_dict(values["history_state"])
    assert state.folded == 0 and state.summarizations >= 2
    assert prefix_breaks(model.seen) == state.summarizations


async def test_langgraph_async_path() -> None:
    model = AgentModel(seen=[])
    graph = build_graph("view", model, InMemorySaver())
    config = {"configurable": {"thread_id": "async-1"}}
    for i in range(10):
        await graph.ainvoke({"messages": [user_turn(i)]}, config)  # type: ignore[arg-type]
    state = HistoryState.from_dict((await graph.aget_state(config)).values["history_state"])
    assert state.summarizations >= 1
    for prompt in model.seen:
        check_prompt(prompt)


def test_summarize_history_reports_a_missing_key() -> None:
    node = summarize_history(max_tokens=BUDGET)
    with pytest.raises(KeyError, match="messages"):
        node.invoke({"other": []})
    with pytest.raises(ValueError):
        summarize_history(mode="erase")  # type: ignore[arg-type]


# ---------------------------------------------------------------- create_agent middleware


def make_agent(mode: str, model: AgentModel, saver: InMemorySaver, **kwargs: Any) -> Any:
    from langchain.agents import create_agent

    from graphthrift.middleware.history import HistoryPruningMiddleware

    return create_agent(
        model,
        tools=[lookup],
        system_prompt="You track orders.",
        middleware=[HistoryPruningMiddleware(max_tokens=BUDGET, mode=mode, **kwargs)],  # type: ignore[arg-type]
        checkpointer=saver,
    )


@pytest.mark.parametrize("mode", ["view", "replace"])
def test_agent_middleware_prunes_what_the_model_sees(mode: str) -> None:
    model = AgentModel(seen=[])
    agent = make_agent(mode, model, InMemorySaver())
    config = {"configurable": {"thread_id": f"agent-{mode}"}}
    for i in range(12):
        agent.invoke({"messages": [user_turn(i)]}, config)
    values = agent.get_state(config).values
    state = HistoryState.from_dict(values["history_state"])
    assert state.summarizations >= 2
    for prompt in model.seen:
        assert isinstance(prompt[0], SystemMessage) and prompt[0].content == "You track orders."
        check_prompt(prompt[1:])
    with_summary = [p for p in model.seen if any(m.id == SUMMARY_ID for m in p)]
    assert with_summary and all(
        isinstance(p[1], HumanMessage) and p[1].id == SUMMARY_ID for p in with_summary
    )
    assert prefix_breaks(model.seen) == state.summarizations
    if mode == "view":
        assert len(values["messages"]) == 12 * 4
    else:
        assert values["messages"][0].id == SUMMARY_ID and len(values["messages"]) < 12 * 4


async def test_agent_middleware_async() -> None:
    model = AgentModel(seen=[])
    agent = make_agent("view", model, InMemorySaver())
    config = {"configurable": {"thread_id": "agent-async"}}
    for i in range(10):
        await agent.ainvoke({"messages": [user_turn(i)]}, config)
    assert (
        HistoryState.from_dict(
            (await agent.aget_state(config)).values["history_state"]
        ).summarizations
        >= 1
    )
    for prompt in model.seen:
        check_prompt(prompt[1:])


# ---------------------------------------------------------------- llama_index


def li_turns(n: int) -> list[Any]:
    from llama_index.core.base.llms.types import ChatMessage

    out = []
    for i in range(n):
        out.append(
            ChatMessage(
                role="user", content=f"Turn {i}: ship order A-{i}00 to Lisbon by May {i + 1}th."
            )
        )
        out.append(
            ChatMessage(
                role="assistant",
                content="",
                additional_kwargs={
                    "tool_calls": [{"id": f"c{i}", "name": "lookup", "args": {"order": f"A-{i}00"}}]
                },
            )
        )
        out.append(
            ChatMessage(
                role="tool",
                content=json.dumps({"order": f"A-{i}00", "status": "packed"}),
                additional_kwargs={"tool_call_id": f"c{i}", "name": "lookup"},
            )
        )
        out.append(
            ChatMessage(role="assistant", content=f"Order A-{i}00 is packed and ships to Lisbon.")
        )
    return out


def test_pruned_chat_memory_view_is_bounded_sticky_and_serialisable() -> None:
    from llama_index.core.base.llms.types import ChatMessage

    from graphthrift.llamaindex.memory import PrunedChatMemory

    memory = PrunedChatMemory.from_defaults(max_tokens=BUDGET)
    views = []
    for message in li_turns(12):
        memory.put(message)
        if message.role.value in ("user", "tool"):
            views.append(memory.get())
    assert len(memory.get_all()) == 48  # the thread is kept whole
    state = HistoryState.from_dict(memory.history_state)
    assert state.summarizations >= 2
    for view in views:
        msgs = to_messages(view)
        assert count_messages(msgs).tokens <= BUDGET
        window = [m for m in msgs if not m.source.additional_kwargs.get("graphthrift_summary")]
        assert window[0].role != "tool"
        calls = {c.id for m in window for c in m.tool_calls}
        assert {m.tool_call_id for m in window if m.role == "tool"} <= calls
    keys = [[(m.role.value, m.content) for m in v] for v in views]
    breaks = sum(1 for a, b in itertools.pairwise(keys) if b[: len(a)] != a)
    assert breaks == state.summarizations

    # The pruning state is plain JSON on the model. (llama_index 0.14's own ChatMessage
    # serialisation fails under this pydantic, so the chat store is handed over as is.)
    data = json.loads(json.dumps(memory.model_dump(exclude={"chat_store"})))
    restored = PrunedChatMemory.from_dict(
        {**data, "chat_store": memory.chat_store}, max_tokens=BUDGET
    )
    assert restored.history_state == memory.history_state
    assert [(m.role, m.content) for m in restored.get()] == [
        (m.role, m.content) for m in memory.get()
    ]
    memory.put(ChatMessage(role="user", content="And the invoice?"))
    assert memory.get()[-1].content == "And the invoice?"
    memory.reset()
    assert memory.history_state is None and memory.get() == []


async def test_pruned_chat_memory_async() -> None:
    from graphthrift.llamaindex.memory import PrunedChatMemory

    memory = PrunedChatMemory.from_defaults(chat_history=li_turns(12), max_tokens=BUDGET)
    view = await memory.aget()
    assert count_messages(view).tokens <= BUDGET
    assert HistoryState.from_dict(memory.history_state).summarizations == 1


async def test_history_memory_block_in_a_real_memory() -> None:
    from llama_index.core.memory import Memory

    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    block = HistoryMemoryBlock(max_tokens=4000)
    memory = Memory.from_defaults(
        session_id="li-block",
        token_limit=600,
        chat_history_token_ratio=0.5,
        token_flush_size=120,
        memory_blocks=[block],
    )
    for message in li_turns(12):
        await memory.aput(message)
    assert block.summary("li-block"), "ejected turns were folded into the block"
    state = HistoryState.from_dict(block.states["li-block"])
    assert state.summarizations >= 1 and "A-000" in state.summary
    messages = await memory.aget()
    assert messages[0].role.value == "system" and "A-000" in messages[0].content
    assert "<conversation_summary>" in messages[0].content


async def test_history_memory_block_truncates_when_asked() -> None:
    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    block = HistoryMemoryBlock()
    text = "Order A-100 ships to Lisbon on May 3rd. " * 40
    short = await block.atruncate(text, 200)
    assert short is not None and "tokens truncated]" in short
    assert await block.atruncate("tiny", 100) is None


# ---------------------------------------------------------------- ledger


def test_summary_calls_are_booked_under_route_summary(ledger: Any, tenant: str) -> None:
    summarizer = ChatModelSummarizer(
        usage_model("- A-100 ships to Berlin May 3rd.", input_tokens=321, output_tokens=12),
        ledger=ledger,
        tenant_id=tenant,
        feature="orders",
    )
    pruner = HistoryPruner(max_tokens=BUDGET, summarizer=summarizer)
    messages = [
        user_turn(i) if j == 0 else AIMessage(content=f"Shipped {i}, tracking TRK-{i}.")
        for i in range(14)
        for j in range(2)
    ]
    result = pruner.prune(messages)
    assert result.summarized
    ledger.flush()
    rows = ledger.records(route="summary", tenant_id=tenant)
    assert len(rows) == result.state.summarizations + result.state.compactions >= 1
    row = rows[0]
    assert (row["kind"], row["model"], row["feature"]) == ("llm", "gpt-4o-mini", "orders")
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (321, 12, "provider")


def test_summary_usage_is_estimated_when_the_model_reports_none(ledger: Any, tenant: str) -> None:
    model = GenericFakeChatModel(messages=iter(["- order A-100, Berlin"]))
    summarizer = ChatModelSummarizer(model, ledger=ledger, tenant_id=tenant, model="gpt-4o-mini")
    summarizer.summarize(to_messages([user_turn(1), AIMessage(content="Shipped.")]), "", 64)
    ledger.flush()
    [row] = ledger.records(route="summary", tenant_id=tenant)
    assert (
        row["usage_source"] == "estimated" and row["input_tokens"] > 50 and row["output_tokens"] > 3
    )


async def test_failed_summary_calls_are_booked_and_raised(ledger: Any, tenant: str) -> None:
    class Broken(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise TimeoutError("provider timed out")

        async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise TimeoutError("provider timed out")

    summarizer = ChatModelSummarizer(
        Broken(messages=iter([])), ledger=ledger, tenant_id=tenant, model="m"
    )
    with pytest.raises(TimeoutError):
        await summarizer.asummarize(to_messages([user_turn(1)]), "", 64)
    ledger.flush()
    [row] = ledger.records(route="summary", tenant_id=tenant)
    assert row["success"] is False and row["error_type"] == "timeout"


def test_langgraph_node_with_a_chat_model_summarizer_books_the_ledger(
    ledger: Any, tenant: str
) -> None:
    summarizer = ChatModelSummarizer(
        usage_model("- orders A-000..A-500 shipped to Berlin."), ledger=ledger, tenant_id=tenant
    )
    model = AgentModel(seen=[])
    graph = build_graph("view", model, InMemorySaver(), summarizer=summarizer)
    config = {"configurable": {"thread_id": f"ledger-{tenant}"}}
    for i in range(8):
        graph.invoke({"messages": [user_turn(i)]}, config)  # type: ignore[arg-type]
    ledger.flush()
    state = HistoryState.from_dict(graph.get_state(config).values["history_state"])
    assert state.summarizations >= 1
    assert (
        len(ledger.records(route="summary", tenant_id=tenant))
        == state.summarizations + state.compactions
    )


def test_extractive_summarizer_needs_no_model() -> None:
    pruner = HistoryPruner(max_tokens=BUDGET, summarizer=ExtractiveSummarizer())
    result = pruner.prune(
        [
            user_turn(i) if j == 0 else AIMessage(content=f"Tracking TRK-{i}.")
            for i in range(14)
            for j in range(2)
        ]
    )
    assert result.summary is not None and "A-000" in result.summary.text


def test_truncated_messages_come_back_as_langchain_copies() -> None:
    from graphthrift.langgraph.history import to_langchain

    huge = {"query": "lorem ipsum " * 2000, "limit": 5}
    messages = [
        HumanMessage(content="Search the archive.", id="h1"),
        AIMessage(content="", id="a1", tool_calls=[{"name": "search", "args": huge, "id": "c1"}]),
        ToolMessage(content="result " * 3000, tool_call_id="c1", id="t1"),
    ]  # one agent turn larger than the budget: the request is sent whole, the rest cut
    result = HistoryPruner(max_tokens=4000).prune(messages)
    assert set(result.truncated) == {1, 2} and result.kept == (0, 1, 2)
    prompt = to_langchain(result)
    assert prompt[0] is messages[0]
    call = prompt[1].tool_calls[0]
    assert call["id"] == "c1" and call["args"]["limit"] == 5
    assert "tokens truncated]" in call["args"]["query"]
    assert "tokens truncated]" in prompt[2].content and prompt[2].tool_call_id == "c1"
    assert messages[2].content.count("result") == 3000  # the originals are untouched
    check_prompt(prompt, 4000)


# ---------------------------------------------------------------- one argument scheme (issue 15)


def summary_type(prompts: list[list[BaseMessage]]) -> set[str]:
    return {type(m).__name__ for p in prompts for m in p if m.id == SUMMARY_ID}


def test_node_and_middleware_send_the_summary_with_the_same_role() -> None:
    node_model, agent_model = AgentModel(seen=[]), AgentModel(seen=[])
    graph = build_graph("view", node_model, InMemorySaver())
    agent = make_agent("view", agent_model, InMemorySaver())
    for i in range(12):
        graph.invoke({"messages": [user_turn(i)]}, {"configurable": {"thread_id": "n"}})  # type: ignore[arg-type]
        agent.invoke({"messages": [user_turn(i)]}, {"configurable": {"thread_id": "a"}})
    assert summary_type(node_model.seen) == summary_type(agent_model.seen) == {"HumanMessage"}


def test_a_pruner_with_pruner_settings_is_refused_not_ignored() -> None:
    from graphthrift.errors import ConfigError
    from graphthrift.llamaindex.memory import PrunedChatMemory
    from graphthrift.middleware.history import HistoryPruningMiddleware

    pruner = HistoryPruner(max_tokens=1000)
    with pytest.raises(ConfigError, match="max_tokens") as info:
        summarize_history(pruner=pruner, max_tokens=300)
    assert info.value.name == "pruner"
    with pytest.raises(ConfigError, match="keep_turns"):
        HistoryPruningMiddleware(pruner=pruner, keep_turns=3)
    with pytest.raises(ConfigError, match="summary_role"):
        summarize_history(pruner=pruner, summary_role="system")
    with pytest.raises(ConfigError, match="summarizer"):
        PrunedChatMemory.from_defaults(pruner=pruner, summarizer=ExtractiveSummarizer())
    assert summarize_history(pruner=pruner, summary_role="user") is not None  # no conflict


def test_summary_model_builds_a_chat_model_summarizer_and_conflicts_with_summarizer() -> None:
    from graphthrift.errors import ConfigError
    from graphthrift.middleware.history import HistoryPruningMiddleware

    chat = GenericFakeChatModel(messages=iter(["- A-100 shipped."]))
    middleware = HistoryPruningMiddleware(summary_model=chat, max_tokens=BUDGET)
    summarizer = middleware.pruner.summarizer
    assert isinstance(summarizer, ChatModelSummarizer) and summarizer.summary_model is chat
    with pytest.raises(ConfigError, match="summary_model"):
        summarize_history(summarizer=ExtractiveSummarizer(), summary_model=chat)


def test_chat_model_summarizer_takes_the_chat_model_as_summary_model_and_the_name_as_model() -> (
    None
):
    chat = GenericFakeChatModel(messages=iter(["x"]))
    new = ChatModelSummarizer(summary_model=chat, model="gpt-4o-mini")
    assert (new.summary_model, new.model_name) == (chat, "gpt-4o-mini")
    with pytest.warns(DeprecationWarning, match="summary_model"):
        old = ChatModelSummarizer(model=chat)
    assert old.summary_model is chat
    with pytest.warns(DeprecationWarning, match="model_name"):
        named = ChatModelSummarizer(chat, model_name="gpt-4o")
    assert named.model_name == "gpt-4o"
