"""The history node's declared state schema, and one summary role everywhere (issue 11.7).

On a plain ``MessagesState`` LangGraph drops the writes of ``summarize_history`` to keys the
schema lacks, so the node pruned nothing and nobody noticed. The node now reads its keys
through the adapter kernel and raises ``StateSchemaError`` naming the schema to extend.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from graphthrift.errors import StateSchemaError
from graphthrift.history import SUMMARY_ID, HistoryPruner


def long_thread(turns: int = 14) -> list[Any]:
    out: list[Any] = []
    for i in range(turns):
        out.append(HumanMessage(f"Turn {i}: order A-{i}00 ships to Lisbon on May {i + 1}th."))
        out.append(AIMessage(f"Noted: order A-{i}00, Lisbon, May {i + 1}th."))
    return out


def graph_on(schema: Any) -> Any:
    from graphthrift.langgraph import summarize_history

    def model(state: Any) -> dict[str, Any]:
        return {"messages": [AIMessage("ok")]}

    builder = StateGraph(schema)
    builder.add_node("prune", summarize_history(max_tokens=200))
    builder.add_node("model", model)
    builder.add_edge(START, "prune")
    builder.add_edge("prune", "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_plain_messages_state_raises_naming_the_schema() -> None:
    graph = graph_on(MessagesState)
    with pytest.raises(StateSchemaError) as caught:
        graph.invoke({"messages": long_thread()}, {"configurable": {"thread_id": "plain"}})
    err = caught.value
    assert err.key == "history_state" and err.schema == "HistoryState"
    assert err.node == "summarize_history"
    assert "graphthrift.langgraph.HistoryState" in str(err)


def test_history_state_schema_is_exported_and_extendable() -> None:
    from graphthrift.langgraph import HistoryMessagesState, HistoryState

    class MyState(HistoryState):
        customer: str

    graph = graph_on(MyState)
    config = {"configurable": {"thread_id": "extended"}}
    out = graph.invoke({"messages": long_thread(), "customer": "acme"}, config)
    assert out["customer"] == "acme"
    assert out["history_state"]["summarizations"] >= 1, "the node's writes were kept"
    assert out["llm_input_messages"][0].id == SUMMARY_ID
    # the first call of a thread works too: the schema's keys start empty, not absent
    first = graph.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t1"}})
    assert [m.content for m in first["llm_input_messages"]] == ["hi"]
    assert HistoryMessagesState is HistoryState  # the earlier name still works


def test_a_state_without_messages_raises_a_schema_error() -> None:
    from graphthrift.langgraph import summarize_history

    node = summarize_history(max_tokens=200)
    with pytest.raises(StateSchemaError, match="'messages'"):
        node.invoke({"history_state": {}})


def test_custom_keys_are_named_in_the_error() -> None:
    from graphthrift.langgraph import summarize_history

    node = summarize_history(max_tokens=200, state_key="memo", name="prune_chat")
    with pytest.raises(StateSchemaError) as caught:
        node.invoke({"messages": long_thread(2)})
    assert caught.value.key == "memo" and caught.value.node == "prune_chat"


def test_summary_role_default_is_the_same_everywhere_and_is_user() -> None:
    from graphthrift.langgraph.history import summarize_history
    from graphthrift.llamaindex.memory import PrunedChatMemory
    from graphthrift.middleware.history import HistoryPruningMiddleware

    node_default = inspect.signature(summarize_history).parameters["summary_role"].default
    mw_default = inspect.signature(HistoryPruningMiddleware).parameters["summary_role"].default
    core_default = inspect.signature(HistoryPruner).parameters["summary_role"].default
    assert node_default == mw_default == core_default == "user"
    assert PrunedChatMemory.from_defaults(max_tokens=4000).pruner.summary_role == "user"


def test_the_node_sends_its_summary_as_a_human_message_by_default() -> None:
    from graphthrift.langgraph import HistoryState

    graph = graph_on(HistoryState)
    out = graph.invoke(
        {"messages": [SystemMessage("Be brief."), *long_thread()]},
        {"configurable": {"thread_id": "role"}},
    )
    sent = out["llm_input_messages"]
    summary = next(m for m in sent if m.id == SUMMARY_ID)
    assert isinstance(summary, HumanMessage)
    assert [type(m) for m in sent].count(SystemMessage) == 1


@pytest.mark.parametrize("which", ["extractive", "chat_model"])
def test_a_summarizer_names_an_argument_it_cannot_use(which: str) -> None:
    """``previous_summary`` is a str ('' when there is none); None was an AttributeError."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from graphthrift.errors import ConfigError
    from graphthrift.summarize import ChatModelSummarizer, ExtractiveSummarizer
    from graphthrift.text.messages import Message

    summarizer = (
        ExtractiveSummarizer()
        if which == "extractive"
        else ChatModelSummarizer(GenericFakeChatModel(messages=iter(["Nopa for 4."])))
    )
    chat = [Message("user", "Book a table at Nopa for 4 on May 3rd.")]
    with pytest.raises(ConfigError, match="previous_summary"):
        summarizer.summarize(chat, None, 40)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_tokens"):
        summarizer.summarize(chat, "", "40")  # type: ignore[arg-type]
    assert "Nopa" in summarizer.summarize(chat, "", 40)
