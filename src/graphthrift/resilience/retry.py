"""Retries with a ceiling: capped per call, and as a share of calls per run and per tenant.

A provider that fails for everyone makes every client retry, and a retry storm multiplies both
the bill and the outage. ``Retrier`` retries only what the error taxonomy
(``graphthrift.errors.classify_error``) says may succeed later (rate limits, timeouts, upstream
errors; never a bad request), waits with exponential backoff and full jitter, honours the
provider's ``retry-after``, caps retries per call, and asks a ``RetryBudget`` before each retry:
retries may be at most ``max_share`` of the calls of the run and of the tenant over a sliding
window, counted in PostgreSQL so every process shares one budget. Past it, the call fails fast
with ``RetryBudgetExhausted``.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.errors import RetryBudgetExhausted, StoreUnavailable, classify_error
from graphthrift.ledger.ledger import Ledger
from graphthrift.resilience._booking import book_decision
from graphthrift.resilience.schema import RETRY_WINDOW_TABLE
from graphthrift.store.postgres import Store

T = TypeVar("T")

__all__ = ["RETRYABLE", "RETRY_GATE", "Backoff", "Retrier", "RetryBudget", "retry_after_of"]

#: Set by an enclosing ``Failover`` around one candidate's call. Told of each failed attempt
#: the ``Retrier`` would retry, it answers whether retrying the same candidate is still worth
#: it: False once the candidate's circuit has opened, so the failover moves on at once instead
#: of spending retries (and the shared retry budget) on a provider that is down.
RETRY_GATE: ContextVar[Callable[[BaseException], bool] | None] = ContextVar(
    "graphthrift_retry_gate", default=None
)

#: Error kinds worth retrying; ``bad_request`` and ``other`` fail at once.
RETRYABLE: frozenset[str] = frozenset({"rate_limit", "timeout", "upstream"})


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    return value if isinstance(value, str) and value else None


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the provider asked to wait: ``retry-after-ms``, ``retry-after`` (seconds or an
    HTTP date) on the error's response or headers, or a ``retry_after`` attribute."""
    direct = getattr(exc, "retry_after", None)
    if isinstance(direct, int | float) and not isinstance(direct, bool) and direct >= 0:
        return float(direct)
    for headers in (
        getattr(getattr(exc, "response", None), "headers", None),
        getattr(exc, "headers", None),
    ):
        ms = _header(headers, "retry-after-ms")
        if ms is not None:
            try:
                return max(0.0, float(ms) / 1000.0)
            except ValueError:
                pass
        raw = _header(headers, "retry-after")
        if raw is None:
            continue
        try:
            return max(0.0, float(raw))
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw) if raw else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: retry ``n`` waits uniform(0, min(cap, base*2^(n-1)))
    seconds, and never less than the provider's ``retry-after``.

    A ``retry-after`` above ``max_retry_after_s`` is not waited for: the call fails at once
    (the provider will not be back soon enough to be worth holding the run).
    """

    base_s: float = 0.5
    cap_s: float = 20.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.cap_s >= self.base_s and self.max_retry_after_s >= 0):
            raise ValueError(
                f"Backoff needs 0 < base_s <= cap_s and max_retry_after_s >= 0, got {self}"
            )

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds before retry number ``retry`` (1-based), or None when not worth waiting."""
        if retry_after is not None and retry_after > self.max_retry_after_s:
            return None
        ceiling = min(self.cap_s, self.base_s * math.pow(2, retry - 1))
        jittered = rng.uniform(0, ceiling)
        return max(jittered, retry_after or 0.0)


_TOUCH_CALL = text(f"""
    INSERT INTO {RETRY_WINDOW_TABLE} AS w (scope, bucket, calls) VALUES (:scope, :bucket, 1)
    ON CONFLICT (scope, bucket) DO UPDATE SET calls = w.calls + 1
""")
_LOCK_SCOPE = text("SELECT pg_advisory_xact_lock(:lock)")
_WINDOW = text(f"""
    SELECT COALESCE(sum(calls), 0), COALESCE(sum(retries), 0) FROM {RETRY_WINDOW_TABLE}
    WHERE scope = :scope AND bucket > :oldest
""")
_TOUCH_RETRY = text(f"""
    INSERT INTO {RETRY_WINDOW_TABLE} AS w (scope, bucket, retries) VALUES (:scope, :bucket, 1)
    ON CONFLICT (scope, bucket) DO UPDATE SET retries = w.retries + 1
""")
_PURGE = text(f"DELETE FROM {RETRY_WINDOW_TABLE} WHERE bucket < :oldest")


class RetryBudget:
    """The share of calls that may be retries, per scope, over a sliding window.

    Args:
        store: the shared ``Store``: every process draws on the same budget.
        max_share: retries allowed per call in the window (0.2: one retry per five calls).
        min_retries: retries always allowed in a window, so a quiet scope can still retry.
        window_s: the sliding window, in seconds.
        scopes: the tags that name a budget (``run_id`` and ``tenant_id`` by default).

    A store that is down does not stop retries (counted as ``retry_budget_store_failure``);
    the per-call cap of the ``Retrier`` still holds.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_share: float = 0.2,
        min_retries: int = 3,
        window_s: float = 60.0,
        scopes: Sequence[str] = ("run_id", "tenant_id"),
    ) -> None:
        if not 0 <= max_share <= 10:
            raise ValueError(f"max_share must be between 0 and 10, got {max_share!r}")
        if isinstance(min_retries, bool) or not isinstance(min_retries, int) or min_retries < 0:
            raise ValueError(f"min_retries must be an int >= 0, got {min_retries!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds, got {window_s!r}")
        self.store = store
        self.max_share = max_share
        self.min_retries = min_retries
        self.window_s = window_s
        self.scopes = tuple(scopes)
        self.bucket_s = window_s / 12.0
        self._touches = 0

    def scope_names(self, tags: Mapping[str, Any]) -> list[str]:
        """The budgets a call with ``tags`` draws on (``tenant_id:acme``, ``run_id:r1``)."""
        return sorted(f"{k}:{tags[k]}" for k in self.scopes if tags.get(k) not in (None, ""))

    def _bucket(self) -> int:
        return int(time.time() // self.bucket_s)

    def _oldest(self, bucket: int) -> int:
        return bucket - round(self.window_s / self.bucket_s)

    def allowed(self, calls: int) -> int:
        """Retries allowed in a window holding ``calls`` calls."""
        return max(self.min_retries, math.floor(self.max_share * calls))

    def record_call(self, tags: Mapping[str, Any]) -> None:
        """Count a first attempt in every scope of ``tags``."""
        names = self.scope_names(tags)
        if not names:
            return
        bucket = self._bucket()
        try:
            with self.store.connect() as conn:
                for name in names:
                    conn.execute(_TOUCH_CALL, {"scope": name, "bucket": bucket})
                self._touches += 1
                if self._touches % 500 == 0:
                    conn.execute(_PURGE, {"oldest": self._oldest(bucket) - 1})
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._store_failed(exc)

    def spend_retry(self, tags: Mapping[str, Any], error_kind: str) -> None:
        """Take one retry from every scope of ``tags``, or raise ``RetryBudgetExhausted``
        (and take nothing) when any of them is spent."""
        names = self.scope_names(tags)
        if not names:
            return
        bucket = self._bucket()
        oldest = self._oldest(bucket)
        refusal: RetryBudgetExhausted | None = None
        try:
            with self.store.connect() as conn:
                for name in names:  # sorted: two retries never lock in opposite orders
                    lock = int.from_bytes(
                        hashlib.sha256(name.encode()).digest()[:8], "big", signed=True
                    )
                    conn.execute(_LOCK_SCOPE, {"lock": lock})
                    calls, retries = conn.execute(_WINDOW, {"scope": name, "oldest": oldest}).one()
                    allowed = self.allowed(int(calls))
                    if int(retries) + 1 > allowed:
                        refusal = RetryBudgetExhausted(
                            name,
                            int(retries),
                            int(calls),
                            allowed,
                            self.max_share,
                            self.window_s,
                            error_kind,
                        )
                        break
                if refusal is None:
                    for name in names:
                        conn.execute(_TOUCH_RETRY, {"scope": name, "bucket": bucket})
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._store_failed(exc)
            return
        if refusal is not None:
            diagnostics.count("retry_budget_exhausted")
            raise refusal

    def _store_failed(self, exc: BaseException) -> None:
        diagnostics.count(
            "retry_budget_store_failure",
            "graphthrift retry budget: store unavailable (%s); retries are capped per call only",
            exc,
        )


class Retrier:
    """Calls a function, retrying what may succeed later, within a per-call and a shared cap.

    Args:
        max_retries: retries per call (3).
        backoff: the ``Backoff`` (exponential, full jitter, honours ``retry-after``).
        budget: a ``RetryBudget`` shared by runs and tenants (None: per-call cap only).
        retry_on: error kinds to retry (``RETRYABLE``).
        sleep, asleep: how to wait (tests and benchmarks pass a clock of their own).
        rng: the jitter's random source.
        ledger: books each retry, and each retry the budget refused, as a zero-cost
            ``kind="retry"`` row (``error_type``, ``attempt``, the delay or the refusal).

    Example:
        >>> retrier = Retrier(max_retries=3, budget=RetryBudget(store, max_share=0.1))
        >>> answer = retrier.call(lambda: model.invoke(messages),
        ...                       tags={"tenant_id": "acme", "run_id": run_id})
    """

    def __init__(
        self,
        *,
        max_retries: int = 3,
        backoff: Backoff | None = None,
        budget: RetryBudget | None = None,
        retry_on: frozenset[str] = RETRYABLE,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        unknown = set(retry_on) - {"timeout", "rate_limit", "bad_request", "upstream", "other"}
        if unknown:
            raise ValueError(f"unknown error kinds in retry_on: {sorted(unknown)}")
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self.budget = budget
        self.retry_on = frozenset(retry_on)
        self.sleep = sleep
        self.asleep = asleep
        self.rng = rng or random.Random()
        self.ledger = ledger
        self.retries = 0

    def _plan(self, exc: BaseException, retry: int, tags: Mapping[str, Any]) -> float:
        """Seconds to wait before retry number ``retry``; re-raises when not retrying."""
        kind = classify_error(exc)
        if kind not in self.retry_on or retry > self.max_retries:
            raise exc
        gate = RETRY_GATE.get()
        if gate is not None and not gate(exc):
            diagnostics.count("retry_skipped_circuit_open")
            raise exc
        delay = self.backoff.delay(retry, retry_after_of(exc), self.rng)
        if delay is None:
            diagnostics.count("retry_after_too_long")
            raise exc
        if self.budget is not None:
            try:
                self.budget.spend_retry(tags, kind)
            except RetryBudgetExhausted as refused:
                book_decision(
                    self.ledger,
                    "retry",
                    tags=tags,
                    error_type=kind,
                    attempt=retry + 1,
                    success=False,
                    extra={
                        "refused": refused.scope,
                        "retries": refused.retries,
                        "calls": refused.calls,
                        "allowed": refused.allowed,
                    },
                )
                raise refused from exc
        self.retries += 1
        diagnostics.count(f"retry_{kind}")
        book_decision(
            self.ledger,
            "retry",
            tags=tags,
            error_type=kind,
            attempt=retry + 1,
            extra={"delay_s": round(delay, 4), "retry_after_s": retry_after_of(exc)},
        )
        return delay

    def call(self, fn: Callable[[], T], *, tags: Mapping[str, Any] | None = None) -> T:
        """``fn()``, retried on retryable errors within the caps."""
        tags = tags or {}
        if self.budget is not None:
            self.budget.record_call(tags)
        retry = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                retry += 1
                self.sleep(self._plan(exc, retry, tags))

    async def acall(
        self, fn: Callable[[], Awaitable[T]], *, tags: Mapping[str, Any] | None = None
    ) -> T:
        """``call`` for coroutines."""
        tags = tags or {}
        if self.budget is not None:
            await asyncio.to_thread(self.budget.record_call, tags)
        retry = 0
        while True:
            try:
                return await fn()
            except Exception as exc:
                retry += 1
                delay = await asyncio.to_thread(self._plan, exc, retry, tags)
                await self.asleep(delay)
