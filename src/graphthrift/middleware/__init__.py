"""``langchain.agents`` AgentMiddleware classes for ``create_agent`` (needs the ``agents`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr
from graphthrift.errors import require_extra

require_extra("langchain.agents.middleware", "agents", "langchain")

_EXPORTS = {
    "HistoryPruningMiddleware": ".history",
    "HistoryPruningState": ".history",
    "SemanticCacheMiddleware": ".cache",
    "CacheMiddleware": ".cache",
    "ExactCacheMiddleware": ".cache",
    "BudgetMiddleware": ".budget",
    "ToolBudgetMiddleware": ".budget",
    "RouterMiddleware": ".route",
    "PromptCacheKeyMiddleware": ".prompt_cache",
    "ResilienceMiddleware": ".resilience",
    "IdempotentToolMiddleware": ".resilience",
    "FailoverMiddleware": ".resilience",
    "default_stack": ".stack",
    "TenantCacheMiddleware": ".stack",
    "ContextCompressionMiddleware": ".stack",
    "AgentModelRoutingMiddleware": ".stack",
    "CallRecordingMiddleware": ".stack",
    "ModelRoutingMiddleware": ".route",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .budget import BudgetMiddleware as BudgetMiddleware
    from .budget import ToolBudgetMiddleware as ToolBudgetMiddleware
    from .cache import CacheMiddleware as CacheMiddleware
    from .cache import ExactCacheMiddleware as ExactCacheMiddleware
    from .cache import SemanticCacheMiddleware as SemanticCacheMiddleware
    from .history import HistoryPruningMiddleware as HistoryPruningMiddleware
    from .history import HistoryPruningState as HistoryPruningState
    from .prompt_cache import PromptCacheKeyMiddleware as PromptCacheKeyMiddleware
    from .resilience import FailoverMiddleware as FailoverMiddleware
    from .resilience import IdempotentToolMiddleware as IdempotentToolMiddleware
    from .resilience import ResilienceMiddleware as ResilienceMiddleware
    from .route import ModelRoutingMiddleware as ModelRoutingMiddleware
    from .route import RouterMiddleware as RouterMiddleware
    from .stack import AgentModelRoutingMiddleware as AgentModelRoutingMiddleware
    from .stack import CallRecordingMiddleware as CallRecordingMiddleware
    from .stack import ContextCompressionMiddleware as ContextCompressionMiddleware
    from .stack import TenantCacheMiddleware as TenantCacheMiddleware
    from .stack import default_stack as default_stack
