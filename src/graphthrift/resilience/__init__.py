"""Resilience without waste: single-flight and request-id dedup, idempotent tools, retry
budgets. Framework-free; the adapters live in ``graphthrift.middleware.resilience`` and
``graphthrift.langgraph.resilience``."""

from __future__ import annotations

from graphthrift.resilience._flight import JSON_CODEC, Codec, FlightStats
from graphthrift.resilience.breaker import CircuitBreaker, Failover
from graphthrift.resilience.idempotency import ToolIdempotency, derive_tool_key
from graphthrift.resilience.inflight import InFlightLog, InFlightUnit, ResumeReport
from graphthrift.resilience.ratelimit import RateLimit, RateReservation, SharedRateLimiter
from graphthrift.resilience.requests import RequestDedup
from graphthrift.resilience.retry import RETRYABLE, Backoff, Retrier, RetryBudget, retry_after_of
from graphthrift.resilience.shutdown import DrainReport, GracefulShutdown
from graphthrift.resilience.singleflight import SingleFlight
from graphthrift.resilience.spend import RunBudget

__all__ = [
    "JSON_CODEC",
    "RETRYABLE",
    "Backoff",
    "CircuitBreaker",
    "Codec",
    "DrainReport",
    "Failover",
    "FlightStats",
    "GracefulShutdown",
    "InFlightLog",
    "InFlightUnit",
    "RateLimit",
    "RateReservation",
    "RequestDedup",
    "ResumeReport",
    "Retrier",
    "RetryBudget",
    "RunBudget",
    "SharedRateLimiter",
    "SingleFlight",
    "ToolIdempotency",
    "derive_tool_key",
    "retry_after_of",
]
