"""Cheap-first routing: difficulty features, answer validators, classifier and router."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "Answer": ".router",
    "DifficultyClassifier": ".router",
    "JsonSchemaValidator": ".router",
    "RouteDecision": ".router",
    "RouteResult": ".router",
    "Router": ".router",
    "ToolArgsValidator": ".router",
    "Validator": ".router",
    "answer_confidence": ".router",
    "answer_usage": ".router",
    "collect_calls": ".router",
    "difficulty_features": ".router",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .router import Answer as Answer
    from .router import DifficultyClassifier as DifficultyClassifier
    from .router import JsonSchemaValidator as JsonSchemaValidator
    from .router import RouteDecision as RouteDecision
    from .router import Router as Router
    from .router import RouteResult as RouteResult
    from .router import ToolArgsValidator as ToolArgsValidator
    from .router import Validator as Validator
    from .router import answer_confidence as answer_confidence
    from .router import answer_usage as answer_usage
    from .router import collect_calls as collect_calls
    from .router import difficulty_features as difficulty_features
