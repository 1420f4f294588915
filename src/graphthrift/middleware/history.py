"""``HistoryPruningMiddleware``: tool-pair-safe, cache-friendly history pruning for ``create_agent``.

Modelled on langchain's ``SummarizationMiddleware`` (``before_model``, a summary message in
place of the folded turns), with the three differences that ``graphthrift.history.pruner`` exists
for: the kept window never starts inside a tool-call/ToolMessage pair, the boundary is
sticky between folds so the provider's prompt cache keeps hitting, and the summary grows by
appended sections instead of being rewritten each time.

Two modes:

- ``"view"`` (default): ``before_model`` folds and stores the summary in agent state;
  ``wrap_model_call`` sends the pruned view. ``messages`` keeps the whole thread.
- ``"replace"``: like ``SummarizationMiddleware``, ``before_model`` rewrites ``messages``
  (``RemoveMessage(REMOVE_ALL_MESSAGES)`` + the pruned prompt) when it folds.

``max_tokens`` counts the messages in state; the agent's system prompt and tool schemas
come on top, so leave room for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    RemoveMessage,
)
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.runtime import Runtime

from graphthrift.history.pruner import HistoryPruner
from graphthrift.history.recall import FoldedTurnStore
from graphthrift.history.state import HistoryState, PruneResult
from graphthrift.kernel import read_state, run_config
from graphthrift.langchain.history import build_history_pruner, recall_scope, to_langchain
from graphthrift.summarize.base import Summarizer

__all__ = ["HistoryPruningMiddleware", "HistoryPruningState"]

_SCHEMA = "HistoryPruningState"
_NODE = "HistoryPruningMiddleware"


class HistoryPruningState(AgentState[Any]):
    """Agent state plus the running summary and sticky boundary (private to the middleware)."""

    history_state: NotRequired[Annotated[dict[str, Any] | None, PrivateStateAttr]]


class HistoryPruningMiddleware(AgentMiddleware[HistoryPruningState, Any, Any]):
    """Prunes the agent's history before each model call, keeping tool pairs and the cache.

    Args:
        pruner: a configured ``HistoryPruner``; otherwise one is built from the settings
            below (see ``HistoryPruner``; env ``GRAPHTHRIFT_HISTORY_*``). Given with any
            of them, raises ``ConfigError``.
        summarizer: writes the summary (default ``ExtractiveSummarizer``; use
            ``ChatModelSummarizer(chat_model, ledger=...)`` for an LLM summary booked in the
            ledger).
        summary_model: a chat model that writes the summary instead (a
            ``ChatModelSummarizer`` over it); not together with ``summarizer``.
        max_tokens, target_tokens, keep_turns, max_summary_tokens, model: the pruner's
            high watermark, low watermark, verbatim turns, summary cap and token model.
        summary_role: ``"user"`` (default, as ``SummarizationMiddleware``, the LangGraph
            node and the LlamaIndex memories) or ``"system"``. The summary is written from
            what users and tools said, so by default it does not carry a system prompt's
            authority.
        mode: ``"view"`` (non-destructive) or ``"replace"`` (rewrites ``messages``).
        recall: a ``FoldedTurnStore`` (``"view"`` mode only): ``before_model`` keeps the
            turns it folds in it verbatim, and each model call gets the folded turns most
            relevant to the latest user message just before it, inside ``max_tokens``.
            Scoped by the run's ``tenant_id`` (metadata, else ``tenant_id`` here) and
            ``thread_id``; a run without a thread id neither keeps nor recalls.

    Example:
        >>> from langchain.agents import create_agent
        >>> from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        >>> agent = create_agent(
        ...     GenericFakeChatModel(messages=iter(["ok"])),
        ...     middleware=[HistoryPruningMiddleware(max_tokens=4000)],
        ... )
        >>> agent.invoke({"messages": [{"role": "user", "content": "hi"}]})["messages"][-1].content
        'ok'
    """

    state_schema = HistoryPruningState

    def __init__(
        self,
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
        mode: Literal["view", "replace"] = "view",
        recall: FoldedTurnStore | None = None,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__()
        self.pruner = build_history_pruner(
            "HistoryPruningMiddleware",
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
        self.mode = mode
        self.tenant_id = tenant_id

    def _scope(self) -> dict[str, Any]:
        """Tenant and thread of the running call, through the adapter kernel."""
        return recall_scope(run_config(), self.tenant_id)

    # ------------------------------------------------------------ translation

    def _to_langchain(self, result: PruneResult) -> list[BaseMessage]:
        return to_langchain(result, self.pruner.summary_role)

    def _update(self, result: PruneResult, stored: Any) -> dict[str, Any] | None:
        if self.mode == "replace" and (result.summarized or result.truncated):
            return {
                "messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *self._to_langchain(result)],
                "history_state": result.state.rebased().to_dict(),
            }
        new = result.state.to_dict()
        if stored is not None and HistoryState.from_dict(stored).to_dict() == new:
            return None
        return {"history_state": new}

    # ------------------------------------------------------------ hooks

    @staticmethod
    def _inputs(state: Any) -> tuple[list[Any], Any]:
        """The thread and the stored summary state, read through the adapter kernel."""
        messages = read_state(state, "messages", schema=_SCHEMA, node=_NODE)
        stored = read_state(state, "history_state", schema=_SCHEMA, node=_NODE, default=None)
        return list(messages or ()), stored

    def before_model(
        self, state: HistoryPruningState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Fold old turns into the summary once the history passes ``max_tokens``."""
        messages, stored = self._inputs(state)
        result = self.pruner.prune(messages, stored, **self._scope(), recall=False)
        return self._update(result, stored)

    async def abefore_model(
        self, state: HistoryPruningState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async twin of ``before_model`` (the summarizer is awaited)."""
        messages, stored = self._inputs(state)
        result = await self.pruner.aprune(messages, stored, **self._scope(), recall=False)
        return self._update(result, stored)

    @staticmethod
    def _stored(request: ModelRequest[Any]) -> Any:
        if not request.state:
            return None
        return read_state(request.state, "history_state", schema=_SCHEMA, node=_NODE, default=None)

    def _view(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        if self.mode != "view" or not request.messages:
            return request
        result = self.pruner.view(request.messages, self._stored(request), **self._scope())
        return request.override(messages=self._to_langchain(result))  # type: ignore[arg-type]

    async def _aview(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        if self.mode != "view" or not request.messages:
            return request
        result = await self.pruner.aview(request.messages, self._stored(request), **self._scope())
        return request.override(messages=self._to_langchain(result))  # type: ignore[arg-type]

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        """In ``"view"`` mode, send the pruned view instead of the whole thread."""
        return handler(self._view(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        """Async twin of ``wrap_model_call``."""
        return await handler(await self._aview(request))
