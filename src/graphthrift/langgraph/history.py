"""``summarize_history``: a LangGraph node that prunes the message history before a model node.

A thin translation over ``graphthrift.history.pruner.HistoryPruner``: LangChain messages in, the
core's sticky, tool-pair-safe pruning, a partial state update out. Two modes:

- ``"view"`` (default, non-destructive): ``messages`` is left intact; the pruned prompt is
  written to ``output_key`` (``llm_input_messages``, the key LangGraph's prebuilt agents
  read) for the model node to send.
- ``"replace"`` (destructive): on a fold, ``messages`` is rewritten with
  ``RemoveMessage(REMOVE_ALL_MESSAGES)`` followed by the pruned prompt, whose summary is one
  message with id ``graphthrift-history-summary`` (replaced in place on the next fold).

The running summary and the sticky boundary live in ``state_key`` as a plain dict, so any
checkpointer stores them and a resumed thread keeps a warm prompt cache.

Build the graph on ``HistoryState`` (or a state that extends it). On a state without the
node's keys LangGraph would silently drop what the node writes; the node raises
``graphthrift.errors.StateSchemaError`` naming the schema instead (issue 11.7).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from langchain_core.messages import (
    AnyMessage,
    RemoveMessage,
)
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages
from typing_extensions import TypedDict

from graphthrift.history.pruner import HistoryPruner
from graphthrift.history.recall import FoldedTurnStore
from graphthrift.history.state import PruneResult
from graphthrift.kernel import read_state
from graphthrift.langchain.history import build_history_pruner, recall_scope, to_langchain
from graphthrift.langgraph._state import latest
from graphthrift.summarize.base import Summarizer

__all__ = ["HistoryMessagesState", "HistoryState", "summarize_history", "to_langchain"]

Mode = Literal["view", "replace"]
SCHEMA = "HistoryState"


class HistoryState(TypedDict):
    """The state schema of ``summarize_history``: extend it with your graph's own keys.

    Like ``langgraph.graph.MessagesState`` (and ``langchain.agents``' ``AgentState``) it
    declares ``messages``; it adds the node's two keys. Both are declared with a reducer so
    that they exist, empty, from a thread's first step: the node can then tell this schema
    from one that lacks them, where LangGraph would drop its writes without a word.

    Keys:
        messages: the whole thread (``add_messages``).
        llm_input_messages: the pruned prompt the node writes in ``"view"`` mode; send it
            instead of ``messages`` (LangGraph's prebuilt agents read this key).
        history_state: the running summary and sticky boundary (``HistoryState.to_dict()``
            of ``graphthrift.history.pruner``), kept by any checkpointer.

    Example:
        >>> class State(HistoryState):
        ...     customer_id: str
    """

    messages: Annotated[list[AnyMessage], add_messages]
    llm_input_messages: Annotated[list[AnyMessage], latest]
    history_state: Annotated[dict[str, Any], latest]


#: The earlier name of ``HistoryState``.
HistoryMessagesState = HistoryState


def summarize_history(
    *,
    pruner: HistoryPruner | None = None,
    summarizer: Summarizer | None = None,
    summary_model: Any = None,
    max_tokens: int | None = None,
    target_tokens: int | None = None,
    keep_turns: int | None = None,
    max_summary_tokens: int | None = None,
    summary_role: Literal["system", "user"] = "user",
    model: str | None = None,
    mode: Mode = "view",
    recall: FoldedTurnStore | None = None,
    tenant_id: str | None = None,
    messages_key: str = "messages",
    output_key: str = "llm_input_messages",
    state_key: str = "history_state",
    name: str = "summarize_history",
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that prunes the history to ``max_tokens``, tool pairs whole, prefix sticky.

    State keys (all declared by ``HistoryState``; a state without ``messages_key`` or
    ``state_key`` raises ``StateSchemaError`` naming it):
        reads ``messages_key`` (default ``messages``): the full history, LangChain messages.
        reads and writes ``state_key`` (default ``history_state``): the summary and sticky
            boundary, a JSON dict (``graphthrift.history.pruner.HistoryState.to_dict()``); empty
            or None on a thread's first step.
        writes ``output_key`` (default ``llm_input_messages``), in ``"view"`` mode: the
            pruned prompt, to send instead of ``messages``.
        writes ``messages_key``, in ``"replace"`` mode and only when turns were folded or a
            message truncated: ``RemoveMessage(REMOVE_ALL_MESSAGES)`` then the pruned prompt.

    Args:
        pruner: a configured ``HistoryPruner``; otherwise one is built from the settings
            below (see ``HistoryPruner`` for each, and their ``GRAPHTHRIFT_HISTORY_*`` env).
            Given with any of them, raises ``ConfigError``.
        summarizer: writes the summary (default ``ExtractiveSummarizer``, no LLM).
        summary_model: a chat model that writes the summary instead (a
            ``ChatModelSummarizer`` over it); not together with ``summarizer``.
        model: the model *name* whose tokenizer counts tokens.
        summary_role: ``"user"`` (default, as ``HistoryPruningMiddleware`` and langchain's
            ``SummarizationMiddleware``) or ``"system"``. The summary is written from what
            users and tools said, so it must not carry a system prompt's authority (a tool
            result could plant instructions in it), and several providers take system
            text only at the start of the prompt.
        mode: ``"view"`` keeps ``messages`` intact; ``"replace"`` rewrites it.
        recall: a ``FoldedTurnStore`` (``"view"`` mode only): folded turns are kept in it
            verbatim, and the ones most relevant to the latest user message come back in
            the prompt just before it, inside ``max_tokens``. Scoped by the run's
            ``tenant_id`` (metadata, else ``tenant_id`` here, else ``""``) and
            ``thread_id`` (``configurable``); a run without a thread id neither keeps
            nor recalls.
        name: the runnable's name (shown in traces and in ``StateSchemaError``).

    Returns:
        A runnable (sync and async) to pass to ``StateGraph.add_node``.

    Example:
        >>> from langgraph.graph import StateGraph, START
        >>> builder = StateGraph(HistoryState)
        >>> builder.add_node("prune", summarize_history(max_tokens=4000))  # doctest: +ELLIPSIS
        <langgraph.graph.state.StateGraph object at ...>
        >>> builder.add_edge(START, "prune")  # doctest: +ELLIPSIS
        <langgraph.graph.state.StateGraph object at ...>
    """
    core = build_history_pruner(
        "summarize_history",
        pruner,
        mode,
        summary_model=summary_model,
        summarizer=summarizer,
        max_tokens=max_tokens,
        target_tokens=target_tokens,
        keep_turns=keep_turns,
        max_summary_tokens=max_summary_tokens,
        summary_role=summary_role,
        model=model,
        recall=recall,
    )

    def scope(config: RunnableConfig | None) -> dict[str, Any]:
        return recall_scope(config, tenant_id)

    def inputs(state: Any) -> tuple[list[Any], Any]:
        messages = read_state(state, messages_key, schema=SCHEMA, node=name)
        stored = read_state(state, state_key, schema=SCHEMA, node=name)
        return list(messages or ()), stored or None

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

    def node(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, stored = inputs(state)
        return update(core.prune(messages, stored, **scope(config)))

    async def anode(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, stored = inputs(state)
        return update(await core.aprune(messages, stored, **scope(config)))

    return RunnableLambda(node, afunc=anode, name=name)
