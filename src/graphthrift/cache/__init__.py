"""Exact and semantic response caches with hard isolation by tenant, user and context."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "AdaptivePolicy": ".policy",
    "BadScopeText": "graphthrift.errors",
    "CacheArgumentError": "graphthrift.errors",
    "CacheHit": ".hit",
    "CacheQuery": ".keys",
    "CacheScope": ".keys",
    "CacheScopeKwargs": ".scope",
    "CacheUnavailable": "graphthrift.errors",
    "CurvePoint": ".tuning",
    "ExactCache": ".exact",
    "SemanticCache": ".semantic",
    "StaticPolicy": ".policy",
    "UnknownScopeKey": "graphthrift.errors",
    "default_key": ".keys",
    "fingerprint": ".keys",
    "lexical_conflict": ".guard",
    "normalize_query": ".keys",
    "precision_recall_curve": ".tuning",
    "tune_threshold": ".tuning",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from graphthrift.errors import BadScopeText as BadScopeText
    from graphthrift.errors import CacheArgumentError as CacheArgumentError
    from graphthrift.errors import CacheUnavailable as CacheUnavailable
    from graphthrift.errors import UnknownScopeKey as UnknownScopeKey

    from .exact import ExactCache as ExactCache
    from .guard import lexical_conflict as lexical_conflict
    from .hit import CacheHit as CacheHit
    from .keys import CacheQuery as CacheQuery
    from .keys import CacheScope as CacheScope
    from .keys import default_key as default_key
    from .keys import fingerprint as fingerprint
    from .keys import normalize_query as normalize_query
    from .policy import AdaptivePolicy as AdaptivePolicy
    from .policy import StaticPolicy as StaticPolicy
    from .scope import CacheScopeKwargs as CacheScopeKwargs
    from .semantic import SemanticCache as SemanticCache
    from .tuning import CurvePoint as CurvePoint
    from .tuning import precision_recall_curve as precision_recall_curve
    from .tuning import tune_threshold as tune_threshold
