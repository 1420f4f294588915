"""LangGraph nodes and conditional-edge helpers.

Each factory returns a callable to pass to ``StateGraph.add_node``; its docstring lists the
state keys it reads and writes. Routing lives in separate conditional-edge functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "summarize_history": ".history",
    "HistoryMessagesState": ".history",
    "HistoryState": ".history",
    "compress_context": ".compress",
    "cache_lookup": ".cache",
    "cache_store": ".cache",
    "lookup_cache": ".cache",
    "cache_answer": ".cache",
    "route_on_cache_hit": ".cache",
    "CacheState": ".cache",
    "budget_guard": ".budget",
    "route_on_budget": ".budget",
    "route_model": ".route",
    "route_by_model": ".route",
    "BudgetState": ".budget",
    "RouteState": ".route",
    "CompressState": ".compress",
    "SingleFlightModel": ".resilience",
    "dedup_requests": ".resilience",
    "idempotent_tool": ".resilience",
    "enforce_budget": ".budget",
    "choose_model": ".route",
    "route_on_model": ".route",
    "resume_interrupted": ".restart",
    "aresume_interrupted": ".restart",
    "unit_config": ".restart",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .budget import BudgetState as BudgetState
    from .budget import budget_guard as budget_guard
    from .budget import enforce_budget as enforce_budget
    from .budget import route_on_budget as route_on_budget
    from .cache import CacheState as CacheState
    from .cache import cache_answer as cache_answer
    from .cache import cache_lookup as cache_lookup
    from .cache import cache_store as cache_store
    from .cache import lookup_cache as lookup_cache
    from .cache import route_on_cache_hit as route_on_cache_hit
    from .compress import CompressState as CompressState
    from .compress import compress_context as compress_context
    from .history import HistoryMessagesState as HistoryMessagesState
    from .history import HistoryState as HistoryState
    from .history import summarize_history as summarize_history
    from .resilience import SingleFlightModel as SingleFlightModel
    from .resilience import dedup_requests as dedup_requests
    from .resilience import idempotent_tool as idempotent_tool
    from .restart import aresume_interrupted as aresume_interrupted
    from .restart import resume_interrupted as resume_interrupted
    from .restart import unit_config as unit_config
    from .route import RouteState as RouteState
    from .route import choose_model as choose_model
    from .route import route_by_model as route_by_model
    from .route import route_model as route_model
    from .route import route_on_model as route_on_model
