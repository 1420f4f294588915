"""LangGraph nodes and conditional-edge helpers.

Each factory returns a callable to pass to ``StateGraph.add_node``; its docstring lists the
state keys it reads and writes. Routing lives in separate conditional-edge functions.
"""

from __future__ import annotations

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "summarize_history": ".history",
    "HistoryMessagesState": ".history",
    "HistoryState": ".history",
    "compress_context": ".compress",
    "cache_lookup": ".cache",
    "cache_store": ".cache",
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
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
