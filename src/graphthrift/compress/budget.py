"""Compression targets: checking ``target_ratio``/``max_tokens`` and turning them into a budget.

``target_ratio`` is the kept fraction in (0, 1]; ``max_tokens`` an absolute budget; with
both, the smaller wins. Unset, the ``GRAPHTHRIFT_COMPRESS_*`` settings apply (read through
``graphthrift.config``), then a third.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from graphthrift.config import env_float, env_int, env_str
from graphthrift.errors import ConfigError, InvalidCompressionTarget

__all__ = [
    "DEFAULT_TARGET_RATIO",
    "check_chunks",
    "check_max_tokens",
    "check_target_ratio",
    "env_target",
    "resolve_budget",
]

DEFAULT_TARGET_RATIO = 1 / 3


def resolve_budget(original_tokens: int, target_ratio: float | None, max_tokens: int | None) -> int:
    """The token budget: the smaller of ``floor(target_ratio * original)`` and ``max_tokens``."""
    budget = original_tokens
    if target_ratio is not None:
        budget = min(budget, math.floor(target_ratio * original_tokens + 1e-9))
    if max_tokens is not None:
        budget = min(budget, max_tokens)
    return max(budget, 0)


def check_target_ratio(value: float | None) -> float | None:
    """``value`` as a kept fraction in (0, 1], or ``InvalidCompressionTarget``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCompressionTarget("target_ratio", value, "a number in (0, 1]")
    if not (0 < value <= 1) or math.isnan(value):
        raise InvalidCompressionTarget("target_ratio", value, "in (0, 1] (kept / original)")
    return float(value)


def check_max_tokens(value: int | None) -> int | None:
    """``value`` as a token budget >= 0, or ``InvalidCompressionTarget``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidCompressionTarget("max_tokens", value, "an int >= 0")
    return value


def env_target(env: str, kind: type[float] | type[int]) -> Any:
    """A budget setting from ``graphthrift.config`` (``None`` when unset)."""
    if env_str(env) is None:
        return None
    try:
        return env_float(env, 0.0) if kind is float else env_int(env, 0)
    except ConfigError as exc:
        raise InvalidCompressionTarget(env, exc.value, f"a {kind.__name__}") from None


def check_chunks(question: object, chunks: object) -> list[str]:
    """Reject a bare string (it would be read character by character) and non-text items."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if isinstance(chunks, str | bytes):
        raise TypeError("chunks must be a sequence of strings, not one str; wrap it: [text]")
    if not isinstance(chunks, Iterable):
        raise TypeError(f"chunks must be a sequence of strings, got {type(chunks).__name__}")
    items = list(chunks)
    for i, chunk in enumerate(items):
        if not isinstance(chunk, str):
            raise TypeError(
                f"chunks[{i}] is {type(chunk).__name__}, not str; pass the text of each "
                "chunk (the adapters pass non-text nodes through untouched)"
            )
    return items
