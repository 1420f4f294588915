"""A pruned prompt as LangChain messages, shared by the LangGraph node and the agent middleware.

Both adapters hand ``HistoryPruner`` LangChain messages and need the same ones back: the
originals untouched (ids, metadata and tool calls kept), the summary as a message of its own,
and truncated copies of oversized messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from graphthrift.errors import ConfigError
from graphthrift.history.pruner import HistoryPruner, build_pruner
from graphthrift.history.state import RECALL_ID, PruneResult
from graphthrift.kernel import run_tags
from graphthrift.text.messages import Message, message_fields

__all__ = ["build_history_pruner", "recall_scope", "to_langchain"]


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


def build_history_pruner(
    owner: str, pruner: HistoryPruner | None, mode: str, **settings: Any
) -> HistoryPruner:
    """The node's and the middleware's pruner, with their shared argument checks.

    ``mode`` must be ``"view"`` or ``"replace"`` (``ValueError``); ``recall`` needs
    ``"view"`` (``ConfigError``), since a recalled snippet must not enter ``messages``.
    """
    if mode not in ("view", "replace"):
        raise ValueError(f"{owner} mode must be 'view' or 'replace', got {mode!r}")
    core = build_pruner(owner, pruner, **settings)
    if core.recall is not None and mode != "view":
        raise ConfigError(
            "recall", core.recall, "needs mode='view' (a recalled snippet must not enter messages)"
        )
    return core


def recall_scope(config: Mapping[str, Any] | None, tenant_id: str | None) -> dict[str, Any]:
    """Tenant and thread of a run (for the recall store), through the adapter kernel."""
    tags = run_tags(config, tenant_id=tenant_id)
    return {"tenant": str(tags.get("tenant_id") or ""), "thread": tags.get("thread_id")}
