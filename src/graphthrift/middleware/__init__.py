"""``langchain.agents`` AgentMiddleware classes for ``create_agent`` (needs the ``agents`` extra)."""

from __future__ import annotations

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "HistoryPruningMiddleware": ".history",
    "HistoryPruningState": ".history",
    "SemanticCacheMiddleware": ".cache",
    "BudgetMiddleware": ".budget",
    "ToolBudgetMiddleware": ".budget",
    "RouterMiddleware": ".route",
    "ResilienceMiddleware": ".resilience",
    "IdempotentToolMiddleware": ".resilience",
    "FailoverMiddleware": ".resilience",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
