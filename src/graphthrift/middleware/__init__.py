"""``langchain.agents`` AgentMiddleware classes for ``create_agent`` (needs the ``agents`` extra)."""

from __future__ import annotations

from graphthrift._lazy import lazy_getattr
from graphthrift.errors import require_extra

require_extra("langchain.agents.middleware", "agents", "langchain")

_EXPORTS = {
    "HistoryPruningMiddleware": ".history",
    "HistoryPruningState": ".history",
    "SemanticCacheMiddleware": ".cache",
    "CacheMiddleware": ".cache",
    "BudgetMiddleware": ".budget",
    "ToolBudgetMiddleware": ".budget",
    "RouterMiddleware": ".route",
    "PromptCacheKeyMiddleware": ".prompt_cache",
    "ResilienceMiddleware": ".resilience",
    "IdempotentToolMiddleware": ".resilience",
    "FailoverMiddleware": ".resilience",
    "ModelRoutingMiddleware": ".route",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
