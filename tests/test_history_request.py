"""The latest human turn is always sent verbatim, and tool results keep their fields (issue 11.6).

A long tool loop after one user message used to fold the request away ("Please keep
tracking order A-105 until it is delivered"), and the summary of the tool results dropped
their keys (``status=shipped`` became nothing). These tests replay such loops through the
core pruner; ``test_history_adapters.py`` replays them through every adapter.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from graphthrift import diagnostics
from graphthrift.history import (
    SUMMARY_ID,
    HistoryPruner,
    HistoryState,
    PruneResult,
)
from graphthrift.langgraph.history import HistoryMessagesState, summarize_history
from graphthrift.summarize import SECTION_NAME, ExtractiveSummarizer
from graphthrift.text import Message, ToolCall

REQUEST = "Please keep tracking order A-105 until it is delivered"


def tracking_loop(rounds: int = 10, request: str = REQUEST) -> list[Message]:
    """One user turn, then ``rounds`` tool round-trips polling the order."""
    msgs = [Message("system", "You are a support agent."), Message("user", request, id="u")]
    for i in range(rounds):
        msgs.append(
            Message(
                "assistant",
                "",
                (ToolCall(f"c{i}", "track_order", json.dumps({"order_id": "A-105"})),),
                id=f"a{i}",
            )
        )
        result = {
            "order_id": "A-105",
            "status": "shipped" if i == rounds - 1 else "in_transit",
            "eta": "June 3",
            "tracking": "00340434161094042557",
            "events": [
                f"scan {j} at hub {i}-{j}: parcel sorted, weighed and loaded onto the truck"
                for j in range(5)
            ],
        }
        msgs.append(
            Message(
                "tool", json.dumps(result), tool_call_id=f"c{i}", name="track_order", id=f"t{i}"
            )
        )
    return msgs


def call_points(msgs: list[Message]) -> list[int]:
    """Where an agent calls the model: after the user message and after each tool result."""
    return [i + 1 for i, m in enumerate(msgs) if m.role in ("user", "tool")]


def assert_pairs_whole(result: PruneResult) -> None:
    calls = {c.id for m in result.messages for c in m.tool_calls}
    answers = {m.tool_call_id for m in result.messages if m.role == "tool"}
    assert calls == answers


def test_request_survives_a_long_tool_loop_verbatim() -> None:
    msgs = tracking_loop()
    pruner = HistoryPruner(max_tokens=1500)
    state: HistoryState | None = None
    folds = 0
    for end in call_points(msgs):
        result = pruner.prune(msgs[:end], state)
        state = result.state
        folds += result.summarized
        sent = [m for m in result.messages if m.role == "user" and m.id != SUMMARY_ID]
        assert [m.text for m in sent] == [REQUEST], f"request missing at call {end}"
        assert sent[0] is msgs[1], "the very message, not a copy"
        assert_pairs_whole(result)
        assert result.tokens_out <= 1500 and not result.over_budget
    assert folds >= 1, "the loop must have been folded for this test to mean anything"


def test_the_request_follows_the_summary_and_precedes_the_window() -> None:
    msgs = tracking_loop()
    result = HistoryPruner(max_tokens=1500).prune(msgs)
    roles = [(m.role, m.id) for m in result.messages]
    assert roles[0] == ("system", None) and roles[1] == ("user", SUMMARY_ID)
    assert roles[2] == ("user", "u") and roles[3][0] == "assistant"
    assert 1 in result.kept and 1 not in result.hidden


def test_a_request_longer_than_a_message_cap_is_never_truncated() -> None:
    request = REQUEST + ". " + " ".join(f"Also note detail {i} of the order." for i in range(60))
    msgs = tracking_loop(4, request=request)
    pruner = HistoryPruner(max_tokens=1200, max_message_tokens=200)
    result = pruner.prune(msgs)
    user = [m for m in result.messages if m.role == "user" and m.id != SUMMARY_ID]
    assert [m.text for m in user] == [request]
    assert 1 not in result.truncated


def test_a_request_over_the_whole_budget_is_sent_anyway_and_flagged() -> None:
    request = " ".join(f"Requirement {i}: the parcel A-{i} must be tracked." for i in range(80))
    msgs = tracking_loop(3, request=request)
    before = diagnostics.get("history_request_over_budget")
    result = HistoryPruner(max_tokens=200).prune(msgs)
    assert [m.text for m in result.messages if m.role == "user" and m.id != SUMMARY_ID] == [request]
    assert result.over_budget and result.tokens_out > 200
    assert diagnostics.get("history_request_over_budget") == before + 1
    assert_pairs_whole(result)


def test_a_request_over_the_whole_budget_raises_when_asked() -> None:
    from graphthrift.history import HistoryRequestTooLarge

    request = " ".join(f"Requirement {i}: the parcel A-{i} must be tracked." for i in range(80))
    pruner = HistoryPruner(max_tokens=200, oversized_request="raise")
    with pytest.raises(HistoryRequestTooLarge) as caught:
        pruner.prune(tracking_loop(3, request=request))
    assert caught.value.max_tokens == 200 and caught.value.tokens > 200
    assert "200" in str(caught.value) and str(caught.value.tokens) in str(caught.value)
    with pytest.raises(ValueError, match="oversized_request"):
        HistoryPruner(oversized_request="drop")  # type: ignore[arg-type]


def test_a_multi_message_human_turn_is_kept_whole() -> None:
    msgs = tracking_loop(10)
    msgs.insert(2, Message("user", "And tell me when A-106 ships too.", id="u2"))
    result = HistoryPruner(max_tokens=1500).prune(msgs)
    assert [m.id for m in result.messages if m.role == "user" and m.id != SUMMARY_ID] == ["u", "u2"]


def test_an_earlier_request_is_folded_once_a_new_one_arrives() -> None:
    msgs = tracking_loop(10)
    pruner = HistoryPruner(max_tokens=1500)
    first = pruner.prune(msgs)
    later = [*msgs, Message("assistant", "It shipped.", id="f"), Message("user", "Thanks! Bye.")]
    result = pruner.prune(later, first.state)
    assert [m.text for m in result.messages if m.role == "user" and m.id != SUMMARY_ID][
        -1
    ] == "Thanks! Bye."
    assert 1 in result.hidden or 1 in result.kept  # never lost either way
    assert "A-105" in (result.summary.text if result.summary else "") or 1 in result.kept


# ---------------------------------------------------------------- tool result fields


@pytest.mark.parametrize(
    "text",
    [
        "Order A-101: status=shipped, eta=June 3, tracking=00340434161094042557",
        "Order A-101\nStatus: shipped\nETA: June 3\nTracking: 00340434161094042557",
        '{"order_id": "A-101", "status": "shipped", "eta": "June 3", "tracking": "00340434161094042557"}',
        "order_id: A-101 | status: shipped | eta: June 3 | tracking: 00340434161094042557",
    ],
)
def test_tool_result_fields_keep_their_keys(text: str) -> None:
    tool = Message("tool", text, tool_call_id="c1", name="track_order")
    out = ExtractiveSummarizer().summarize([tool], "", 60).lower()
    assert "status=shipped" in out, out
    assert "eta=june 3" in out, out
    assert "a-101" in out


def test_a_later_field_value_supersedes_an_earlier_one_under_pressure() -> None:
    polls = [
        Message(
            "tool",
            json.dumps({"order_id": "A-105", "status": s, "note": f"poll {i} from the carrier"}),
            tool_call_id=f"c{i}",
            name="track_order",
        )
        for i, s in enumerate(["label_created", "in_transit", "out_for_delivery", "delivered"])
    ]
    out = ExtractiveSummarizer().summarize(polls, "", 24)
    assert "status=delivered" in out, out
    assert "status=label_created" not in out


def test_fields_of_different_orders_do_not_supersede_each_other() -> None:
    polls = [
        Message(
            "tool",
            json.dumps({"order_id": oid, "status": s, "note": f"carrier poll number {i}"}),
            tool_call_id=f"c{i}",
            name="track_order",
        )
        for i, (oid, s) in enumerate([("A-101", "shipped"), ("A-102", "delayed")])
    ]
    out = ExtractiveSummarizer().summarize(polls, "", 36)
    assert "status=shipped" in out and "status=delayed" in out, out


def test_compaction_keeps_fields_as_facts() -> None:
    sections = [
        Message(
            "system",
            "Tool track_order: order_id=A-101; status=shipped; eta=June 3",
            name=SECTION_NAME,
        ),
        Message(
            "system",
            "Assistant: "
            + "; ".join(f"checking the warehouse shelf number {i}" for i in range(12)),
            name=SECTION_NAME,
        ),
    ]
    out = ExtractiveSummarizer().summarize(sections, "", 30)
    assert "status=shipped" in out and "eta=June 3" in out, out


def test_the_issue_case_summary_keeps_status_and_eta() -> None:
    tool = Message(
        "tool",
        "Order A-101: status=shipped, eta=June 3, tracking 00340434161094042557",
        tool_call_id="c1",
        name="track_order",
    )
    msgs = [
        Message("user", "Where is my order A-101?", id="u0"),
        Message("assistant", "", (ToolCall("c1", "track_order", '{"id": "A-101"}'),), id="a0"),
        tool,
        Message("assistant", "It has shipped.", id="f0"),
        *[
            m
            for i in range(1, 8)
            for m in (
                Message("user", f"Question {i}: what about the invoice {i} for my account?"),
                Message("assistant", f"Invoice {i} was paid in full on May {i}th, thanks."),
            )
        ],
    ]
    result = HistoryPruner(max_tokens=200).prune(msgs)
    assert 2 in result.folded
    summary = result.summary.text if result.summary else ""
    assert "status=shipped" in summary and "eta=June 3" in summary, summary


# ---------------------------------------------------------------- every adapter


class LoopModel(GenericFakeChatModel):
    """A fake tool-calling model that polls the order ``rounds`` times, then answers.

    It records every prompt it is sent: what a provider would see.
    """

    seen: list[list[BaseMessage]]
    rounds: int = 10
    messages: Any = iter(())

    def bind_tools(self, tools: Any, **kwargs: Any) -> LoopModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        n = len(self.seen) - 1  # the prompt is pruned: count calls, not ToolMessages
        if n < self.rounds:
            reply = AIMessage(
                content="",
                tool_calls=[
                    {
                        "name": "track_order",
                        "args": {"order_id": "A-105"},
                        "id": f"call-{n}",
                        "type": "tool_call",
                    }
                ],
            )
        else:
            reply = AIMessage(content="Order A-105 has been delivered.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def track_order(order_id: str) -> str:
    """Poll the carrier for an order."""
    return json.dumps(
        {
            "order_id": order_id,
            "status": "in_transit",
            "eta": "June 3",
            "tracking": "00340434161094042557",
            "events": [
                f"scan {j}: parcel sorted, weighed and loaded onto the truck at hub {j}"
                for j in range(5)
            ],
        }
    )


def assert_every_prompt_has_the_request(seen: list[list[BaseMessage]]) -> None:
    assert len(seen) == 11
    for prompt in seen:
        humans = [m for m in prompt if isinstance(m, HumanMessage) and m.id != SUMMARY_ID]
        assert [m.content for m in humans] == [REQUEST]
        calls = {c["id"] for m in prompt if isinstance(m, AIMessage) for c in m.tool_calls}
        answers = {m.tool_call_id for m in prompt if isinstance(m, ToolMessage)}
        assert calls == answers
    assert any(m.id == SUMMARY_ID for m in seen[-1]), "the loop must have been folded"


@pytest.mark.parametrize("mode", ["view", "replace"])
def test_langgraph_node_keeps_the_request_through_a_tool_loop(mode: str) -> None:
    model = LoopModel(seen=[])

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        prompt = state["llm_input_messages"] if mode == "view" else state["messages"]
        return {"messages": [model.invoke(prompt)]}

    builder = StateGraph(HistoryMessagesState)
    builder.add_node("prune", summarize_history(max_tokens=1500, mode=mode))  # type: ignore[arg-type]
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([track_order]))
    builder.add_edge(START, "prune")
    builder.add_edge("prune", "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "prune")
    graph = builder.compile(checkpointer=InMemorySaver())
    graph.invoke(
        {"messages": [HumanMessage(REQUEST)]},
        {"configurable": {"thread_id": f"loop-{mode}"}, "recursion_limit": 100},
    )
    assert_every_prompt_has_the_request(model.seen)


@pytest.mark.parametrize("mode", ["view", "replace"])
def test_agent_middleware_keeps_the_request_through_a_tool_loop(mode: str) -> None:
    from langchain.agents import create_agent

    from graphthrift.middleware import HistoryPruningMiddleware

    model = LoopModel(seen=[])
    agent = create_agent(
        model,
        tools=[track_order],
        system_prompt="You track orders.",
        middleware=[HistoryPruningMiddleware(max_tokens=1500, mode=mode)],  # type: ignore[arg-type]
        checkpointer=InMemorySaver(),
    )
    agent.invoke(
        {"messages": [HumanMessage(REQUEST)]},
        {"configurable": {"thread_id": f"mw-{mode}"}, "recursion_limit": 100},
    )
    assert_every_prompt_has_the_request(model.seen)


def li_loop() -> list[Any]:
    from llama_index.core.base.llms.types import ChatMessage

    out = [ChatMessage(role="user", content=REQUEST)]
    for i in range(10):
        out.append(
            ChatMessage(
                role="assistant",
                content="",
                additional_kwargs={
                    "tool_calls": [{"id": f"c{i}", "name": "track_order", "args": {"o": "A-105"}}]
                },
            )
        )
        out.append(
            ChatMessage(
                role="tool",
                content=track_order.invoke({"order_id": "A-105"}),
                additional_kwargs={"tool_call_id": f"c{i}", "name": "track_order"},
            )
        )
    return out


def test_pruned_chat_memory_keeps_the_request_through_a_tool_loop() -> None:
    from graphthrift.llamaindex.memory import PrunedChatMemory

    memory = PrunedChatMemory.from_defaults(max_tokens=1500)
    folded = False
    for m in li_loop():
        memory.put(m)
        if m.role.value == "user":
            continue
        view = memory.get()
        users = [
            v
            for v in view
            if v.role.value == "user" and not v.additional_kwargs.get("graphthrift_summary")
        ]
        assert [v.content for v in users] == [REQUEST]
        folded = folded or any(v.additional_kwargs.get("graphthrift_summary") for v in view)
    assert folded


async def test_llamaindex_memory_with_the_block_keeps_the_request() -> None:
    from llama_index.core.memory import Memory

    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    memory = Memory.from_defaults(
        session_id="loop", token_limit=1500, memory_blocks=[HistoryMemoryBlock()]
    )
    for m in li_loop():
        await memory.aput(m)
        view = await memory.aget()
        assert REQUEST in [v.content for v in view if v.role.value == "user"]
