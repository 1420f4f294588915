"""Settings read from the environment, in one place.

A keyword argument always wins; the ``GRAPHTHRIFT_*`` variable is the fallback a deployment
sets without touching code; then the default. A value that does not parse raises
``ConfigError`` naming the variable, what it held and the rule, never a bare ``ValueError``
from deep inside.

The variables:

=====================================  =========================================================
``GRAPHTHRIFT_HOME``                   directory of the embedded PostgreSQL (``./.graphthrift``)
``GRAPHTHRIFT_DATABASE_URL``           a real PostgreSQL server instead of the embedded one
``GRAPHTHRIFT_STORE_TIMEOUT``          seconds a store query may take (``none``: no limit)
``GRAPHTHRIFT_METRICS_PORT`` / ``_ADDR`` where ``PrometheusMetrics.serve`` listens
``GRAPHTHRIFT_CACHE_*``                semantic cache threshold and deadlines
``GRAPHTHRIFT_BUDGET_*``               budget failure mode and reservation TTL
``GRAPHTHRIFT_HISTORY_*``              history pruner budgets
``GRAPHTHRIFT_COMPRESS_*``             compression target
``GRAPHTHRIFT_EMBED_*``                embedder batch size and threads
``GRAPHTHRIFT_SUMMARY_MAX_OUTPUT_TOKENS`` cap on a chat-model summary
``GRAPHTHRIFT_LLMLINGUA_MODEL``        local path of the LLMLingua model
=====================================  =========================================================
"""

from __future__ import annotations

import os

from graphthrift.errors import ConfigError

__all__ = ["env_flag", "env_float", "env_int", "env_str", "setting"]

_TRUE = ("1", "true", "yes", "on")


def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's text, or ``default`` when it is unset or blank."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return raw


def env_flag(name: str) -> bool:
    """True when the variable is one of 1/true/yes/on (any case)."""
    return (os.environ.get(name) or "").strip().lower() in _TRUE


def env_float(name: str, default: float) -> float:
    """The variable as a number, or ``default`` when unset or blank."""
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(name, raw, "must be a number") from None


def setting(name: str, value: float | None, default: float) -> float:
    """A keyword setting, else its environment variable, else the default."""
    return float(value) if value is not None else env_float(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """The variable as an integer (at least ``minimum``), or ``default`` when unset or blank."""
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, raw, "must be an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(name, value, f"must be >= {minimum}")
    return value
