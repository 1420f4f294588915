"""A pruned prompt as LangChain messages, shared by the LangGraph node and the agent middleware.

Both adapters hand ``HistoryPruner`` LangChain messages and need the same ones back: the
originals untouched (ids, metadata and tool calls kept), the summary as a message of its own,
and truncated copies of oversized messages.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from graphthrift.history.state import RECALL_ID, PruneResult
from graphthrift.text.messages import Message, message_fields

__all__ = ["to_langchain"]


def _copy(original: BaseMessage, m: Message) -> BaseMessage:
    """``original`` with the shortened content (and tool-call arguments) of ``m``."""
    update = message_fields(m)
    if not getattr(original, "tool_calls", None):
        update.pop("tool_calls", None)
    return original.model_copy(update=update)


def to_langchain(result: PruneResult, summary_role: str = "user") -> list[BaseMessage]:
    """The pruned prompt as LangChain messages: the originals, the summary, truncated copies.

    ``summary_role`` defaults to ``"user"``, as ``HistoryPruner`` and every adapter do.
    """
    summary_cls = SystemMessage if summary_role == "system" else HumanMessage

    def make_summary(m: Message) -> BaseMessage:
        return summary_cls(
            content=message_fields(m)["content"],
            id=m.id,
            additional_kwargs={"lc_source": "recall" if m.id == RECALL_ID else "summarization"},
        )

    return list(result.materialize(make_summary, _copy))
