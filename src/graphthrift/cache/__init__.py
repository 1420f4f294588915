"""Exact and semantic response caches with hard isolation by tenant, user and context."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "AdaptivePolicy": ".cache",
    "CacheHit": ".cache",
    "CacheQuery": ".cache",
    "CacheScope": ".cache",
    "CacheUnavailable": ".cache",
    "CurvePoint": ".cache",
    "ExactCache": ".cache",
    "SemanticCache": ".cache",
    "StaticPolicy": ".cache",
    "default_key": ".cache",
    "fingerprint": ".cache",
    "lexical_conflict": ".cache",
    "normalize_query": ".cache",
    "precision_recall_curve": ".cache",
    "tune_threshold": ".cache",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .cache import AdaptivePolicy as AdaptivePolicy
    from .cache import CacheHit as CacheHit
    from .cache import CacheQuery as CacheQuery
    from .cache import CacheScope as CacheScope
    from .cache import CacheUnavailable as CacheUnavailable
    from .cache import CurvePoint as CurvePoint
    from .cache import ExactCache as ExactCache
    from .cache import SemanticCache as SemanticCache
    from .cache import StaticPolicy as StaticPolicy
    from .cache import default_key as default_key
    from .cache import fingerprint as fingerprint
    from .cache import lexical_conflict as lexical_conflict
    from .cache import normalize_query as normalize_query
    from .cache import precision_recall_curve as precision_recall_curve
    from .cache import tune_threshold as tune_threshold
