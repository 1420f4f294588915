"""``summarize_history``: a LangGraph node that prunes the message history before a model node.

A thin translation over ``graphthrift.history.HistoryPruner``: LangChain messages in, the
core's sticky, tool-pair-safe pruning, a partial state update out. Two modes:

- ``"view"`` (default, non-destructive): ``messages`` is left intact; the pruned prompt is
  written to ``output_key`` (``llm_input_messages``, the key LangGraph's prebuilt agents
  read) for the model node to send.
- ``"replace"`` (destructive): on a fold, ``messages`` is rewritten with
  ``RemoveMessage(REMOVE_ALL_MESSAGES)`` followed by the pruned prompt, whose summary is one
  message with id ``graphthrift-history-summary`` (replaced in place on the next fold).

The running summary and the sticky boundary live in ``state_key`` as a plain dict, so any
checkpointer stores them and a resumed thread keeps a warm prompt cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import (
    AnyMessage,
    RemoveMessage,
)
from langchain_core.runnables import RunnableLambda
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages
from typing_extensions import TypedDict

from graphthrift.history import HistoryPruner, PruneResult
from graphthrift.langchain.history import to_langchain
from graphthrift.summarize import Summarizer

__all__ = ["HistoryMessagesState", "summarize_history", "to_langchain"]

Mode = Literal["view", "replace"]


class HistoryMessagesState(TypedDict):
    """A ready state schema for the default keys of ``summarize_history``."""

    messages: Annotated[list[AnyMessage], add_messages]
    llm_input_messages: NotRequired[list[AnyMessage]]
    history_state: NotRequired[dict[str, Any] | None]


def _read(state: Any, key: str) -> Any:
    if isinstance(state, Mapping):
        return state.get(key)
    return getattr(state, key, None)


def summarize_history(
    *,
    pruner: HistoryPruner | None = None,
    summarizer: Summarizer | None = None,
    max_tokens: int | None = None,
    target_tokens: int | None = None,
    keep_turns: int | None = None,
    max_summary_tokens: int | None = None,
    summary_role: Literal["system", "user"] = "system",
    model: str | None = None,
    mode: Mode = "view",
    messages_key: str = "messages",
    output_key: str = "llm_input_messages",
    state_key: str = "history_state",
    name: str = "summarize_history",
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that prunes the history to ``max_tokens``, tool pairs whole, prefix sticky.

    State keys:
        reads ``messages_key`` (default ``messages``): the full history, LangChain messages.
        reads and writes ``state_key`` (default ``history_state``): the summary and sticky
            boundary, a JSON dict (``HistoryState.to_dict()``); declare it in your state
            schema without a reducer.
        writes ``output_key`` (default ``llm_input_messages``), in ``"view"`` mode: the
            pruned prompt, to send instead of ``messages``.
        writes ``messages_key``, in ``"replace"`` mode and only when turns were folded or a
            message truncated: ``RemoveMessage(REMOVE_ALL_MESSAGES)`` then the pruned prompt.

    Args:
        pruner: a configured ``HistoryPruner``; otherwise one is built from the settings
            below (see ``HistoryPruner`` for each, and their ``GRAPHTHRIFT_HISTORY_*`` env).
        mode: ``"view"`` keeps ``messages`` intact; ``"replace"`` rewrites it.
        name: the runnable's name (shown in traces).

    Returns:
        A runnable (sync and async) to pass to ``StateGraph.add_node``.

    Example:
        >>> from langgraph.graph import StateGraph, START
        >>> builder = StateGraph(HistoryMessagesState)
        >>> builder.add_node("prune", summarize_history(max_tokens=4000))  # doctest: +ELLIPSIS
        <langgraph.graph.state.StateGraph object at ...>
        >>> builder.add_edge(START, "prune")  # doctest: +ELLIPSIS
        <langgraph.graph.state.StateGraph object at ...>
    """
    if mode not in ("view", "replace"):
        raise ValueError(f"summarize_history mode must be 'view' or 'replace', got {mode!r}")
    core = pruner or HistoryPruner(
        summarizer=summarizer,
        max_tokens=max_tokens,
        target_tokens=target_tokens,
        keep_turns=keep_turns,
        max_summary_tokens=max_summary_tokens,
        summary_role=summary_role,
        model=model,
    )

    def inputs(state: Any) -> tuple[list[Any], Any]:
        messages = _read(state, messages_key)
        if messages is None:
            raise KeyError(f"summarize_history: the state has no {messages_key!r} key")
        return list(messages), _read(state, state_key)

    def update(result: PruneResult) -> dict[str, Any]:
        prompt = to_langchain(result, core.summary_role)
        if mode == "view":
            return {output_key: prompt, state_key: result.state.to_dict()}
        if result.summarized or result.truncated:
            return {
                messages_key: [RemoveMessage(id=REMOVE_ALL_MESSAGES), *prompt],
                state_key: result.state.rebased().to_dict(),
            }
        return {state_key: result.state.to_dict()}

    def node(state: Any) -> dict[str, Any]:
        messages, stored = inputs(state)
        return update(core.prune(messages, stored))

    async def anode(state: Any) -> dict[str, Any]:
        messages, stored = inputs(state)
        return update(await core.aprune(messages, stored))

    return RunnableLambda(node, afunc=anode, name=name)
