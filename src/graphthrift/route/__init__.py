"""Cheap-first routing: difficulty features, answer validators, classifier and router.

Modules: ``features`` (fast text markers of difficulty), ``validators`` (answers and their
checks), ``classifier`` (``DifficultyClassifier``), ``router`` (``Router``, the cascade).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "Answer": ".validators",
    "DifficultyClassifier": ".classifier",
    "FEATURE_NAMES": ".features",
    "JsonSchemaValidator": ".validators",
    "RouteDecision": ".router",
    "RouteResult": ".router",
    "Router": ".router",
    "ToolArgsValidator": ".validators",
    "Validator": ".validators",
    "answer_confidence": ".validators",
    "answer_usage": ".router",
    "collect_calls": ".router",
    "difficulty_features": ".features",
    "heuristic_difficulty": ".features",
    "request_text": ".router",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import DifficultyClassifier as DifficultyClassifier
    from .features import FEATURE_NAMES as FEATURE_NAMES
    from .features import difficulty_features as difficulty_features
    from .features import heuristic_difficulty as heuristic_difficulty
    from .router import RouteDecision as RouteDecision
    from .router import Router as Router
    from .router import RouteResult as RouteResult
    from .router import answer_usage as answer_usage
    from .router import collect_calls as collect_calls
    from .router import request_text as request_text
    from .validators import Answer as Answer
    from .validators import JsonSchemaValidator as JsonSchemaValidator
    from .validators import ToolArgsValidator as ToolArgsValidator
    from .validators import Validator as Validator
    from .validators import answer_confidence as answer_confidence
