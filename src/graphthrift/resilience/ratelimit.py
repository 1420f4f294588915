"""Shared rate limits: token buckets in requests and tokens per minute, in PostgreSQL.

Clients that each respect a provider's limit on their own still overrun it together, and then
retry together (a 429 storm). ``SharedRateLimiter`` keeps one token bucket per provider,
model and tenant limit in ``graphthrift_rate_buckets``, so every process on the store draws
on the same allowance. A call reserves one request and its tokens (the counted input plus the
capped output) atomically, from both buckets or neither, and ``settle`` returns what it did not
use. Over the limit a caller waits up to ``max_wait_s``, then is shed with ``RateLimited``.
Priority classes keep interactive traffic ahead of batch traffic: a batch call may not take a
bucket below ``batch_reserve`` of its capacity, and while an interactive caller (in any
process) waits for room in a bucket, batch calls on it wait too, so a stream of small batch
calls cannot starve a large interactive one.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.errors import RateLimited, StoreUnavailable
from graphthrift.ledger.ledger import Ledger
from graphthrift.resilience._booking import book_decision
from graphthrift.resilience.schema import RATE_BUCKETS_TABLE, RATE_WAITERS_TABLE
from graphthrift.store.postgres import Store

__all__ = ["Priority", "RateLimit", "RateReservation", "SharedRateLimiter"]

Priority = Literal["interactive", "batch"]

_TAKE = text(f"""
    INSERT INTO {RATE_BUCKETS_TABLE} AS b (key, level, capacity, refill_per_s, updated_at)
    SELECT :key, CAST(:capacity AS float8) - CAST(:cost AS float8), CAST(:capacity AS float8), CAST(:rate AS float8), clock_timestamp()
    WHERE CAST(:capacity AS float8) - CAST(:cost AS float8) >= CAST(:floor AS float8)
    ON CONFLICT (key) DO UPDATE SET
        level = LEAST(EXCLUDED.capacity, b.level + CAST(:rate AS float8)
                      * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)) - CAST(:cost AS float8),
        capacity = EXCLUDED.capacity, refill_per_s = EXCLUDED.refill_per_s,
        updated_at = clock_timestamp()
    WHERE LEAST(EXCLUDED.capacity, b.level + CAST(:rate AS float8)
                * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)) - CAST(:cost AS float8) >= CAST(:floor AS float8)
    RETURNING level
""")
_LEVEL = text(f"""
    SELECT LEAST(capacity, level + refill_per_s
                 * EXTRACT(EPOCH FROM clock_timestamp() - updated_at))
    FROM {RATE_BUCKETS_TABLE} WHERE key = :key
""")
_GIVE = text(f"""
    UPDATE {RATE_BUCKETS_TABLE} SET level = LEAST(capacity, level + CAST(:amount AS float8)) WHERE key = :key
""")
_QUEUED = text(f"""
    SELECT key FROM {RATE_WAITERS_TABLE}
    WHERE key = ANY(:keys) AND until > clock_timestamp() LIMIT 1
""")
_COUNT_QUEUED = text(f"""
    SELECT count(*) FROM {RATE_WAITERS_TABLE} WHERE key = :key AND until > clock_timestamp()
""")
_ENQUEUE = text(f"""
    INSERT INTO {RATE_WAITERS_TABLE} AS w (key, waiter, until)
    VALUES (:key, :waiter, clock_timestamp() + make_interval(secs => :for_s))
    ON CONFLICT (key, waiter) DO UPDATE SET until = EXCLUDED.until
""")
_DEQUEUE = text(f"DELETE FROM {RATE_WAITERS_TABLE} WHERE waiter = :waiter")
_PURGE_WAITERS = text(f"DELETE FROM {RATE_WAITERS_TABLE} WHERE until < clock_timestamp()")
#: How soon a batch call held back by a queued interactive one looks again (seconds).
_QUEUE_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests and tokens per minute (either may be None: not limited)."""

    rpm: float | None = None
    tpm: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"RateLimit.{name} must be > 0 per minute, got {value!r}")


@dataclass(frozen=True, slots=True)
class RateReservation:
    """What a call took: settle it with the tokens it really used."""

    token_key: str | None
    tokens: int


class _Full(Exception):
    def __init__(self, key: str, needed: float, available: float, rate: float) -> None:
        super().__init__(key)
        self.key, self.needed, self.available, self.rate = key, needed, available, rate

    def wait_s(self) -> float:
        return max(0.0, (self.needed - self.available) / self.rate) if self.rate > 0 else 60.0


class _Queued(_Full):
    """Room enough, but an interactive caller is waiting for this bucket: a batch call waits."""

    def wait_s(self) -> float:
        return _QUEUE_POLL_S


class SharedRateLimiter:
    """Token buckets (RPM and TPM) per provider, model and tenant, shared through the store.

    Args:
        store: the shared ``Store``.
        limits: ``RateLimit`` per model name (``"gpt-4o-mini"``) or provider-prefixed name
            (``"openai:gpt-4o-mini"``); ``"*"`` applies to every other model.
        per_tenant: one bucket per tenant (True) or one per model for everyone (False).
        max_wait_s: how long a caller waits for room before ``RateLimited``.
        batch_reserve: the share of each bucket that only interactive calls may use; and
            while an interactive caller waits for room in a bucket, batch calls on it wait.
        ledger: books each shed call as a zero-cost ``kind="rate_limited"`` row.

    A store that is down lets calls through (counted as ``rate_limit_store_failure``).

    Example:
        >>> limiter = SharedRateLimiter(store, {"gpt-4o-mini": RateLimit(rpm=500, tpm=200_000)})
        >>> held = limiter.acquire("gpt-4o-mini", tokens=1_400, tenant_id="acme")
        >>> # ... call the model ...
        >>> limiter.settle(held, used_tokens=930)
    """

    def __init__(
        self,
        store: Store,
        limits: Mapping[str, RateLimit],
        *,
        per_tenant: bool = True,
        max_wait_s: float = 10.0,
        batch_reserve: float = 0.2,
        ledger: Ledger | None = None,
    ) -> None:
        if not limits:
            raise ValueError("SharedRateLimiter needs at least one RateLimit")
        for name, limit in limits.items():
            if not isinstance(limit, RateLimit):
                raise TypeError(f"limit for {name!r} must be a RateLimit, got {limit!r}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds, got {max_wait_s!r}")
        if not 0 <= batch_reserve < 1:
            raise ValueError(f"batch_reserve must be in [0, 1), got {batch_reserve!r}")
        self.store = store
        self.limits = dict(limits)
        self.per_tenant = per_tenant
        self.max_wait_s = max_wait_s
        self.batch_reserve = batch_reserve
        self.ledger = ledger
        self._rng = random.Random()

    def limit_for(self, model: str) -> tuple[str, RateLimit] | None:
        """The model's limit and the bucket name it is counted under: the exact name, then
        the name without its provider (both count under the limit's own name), then ``*``
        (each model its own bucket)."""
        bare = model.split(":", 1)[-1]
        for name in (model, bare):
            if name in self.limits:
                return name, self.limits[name]
        if "*" in self.limits:
            return model, self.limits["*"]
        return None

    def _key(self, kind: str, model: str, tenant_id: str | None) -> str:
        tenant = tenant_id if self.per_tenant and tenant_id else "*"
        return f"{kind}|{model}|{tenant}"

    def _try(
        self, model: str, tokens: int, tenant_id: str | None, priority: Priority
    ) -> RateReservation:
        found = self.limit_for(model)
        if found is None:
            return RateReservation(None, 0)
        model, limit = found
        wants: list[tuple[str, float, float]] = []  # key, cost, per-minute capacity
        if limit.rpm is not None:
            wants.append((self._key("rpm", model, tenant_id), 1.0, limit.rpm))
        if limit.tpm is not None:
            wants.append((self._key("tpm", model, tenant_id), float(tokens), limit.tpm))
        for key, cost, capacity in wants:
            if cost > capacity:
                raise RateLimited(key, cost, capacity, 0.0, float("inf"))
        reserve = self.batch_reserve if priority == "batch" else 0.0
        with self.store.connect() as conn:
            if priority == "batch":
                queued = conn.execute(_QUEUED, {"keys": [k for k, _, _ in wants]}).scalar()
                if queued is not None:
                    cost, capacity = next((c, cap) for k, c, cap in wants if k == queued)
                    raise _Queued(queued, cost, 0.0, capacity / 60.0)
            for key, cost, capacity in sorted(wants):
                params = {
                    "key": key,
                    "cost": cost,
                    "capacity": capacity,
                    "rate": capacity / 60.0,
                    "floor": reserve * capacity,
                }
                if conn.execute(_TAKE, params).first() is None:
                    level = conn.execute(_LEVEL, {"key": key}).scalar()
                    available = float(capacity if level is None else level) - reserve * capacity
                    raise _Full(key, cost, max(0.0, available), capacity / 60.0)
        token_key = self._key("tpm", model, tenant_id) if limit.tpm is not None else None
        return RateReservation(token_key, tokens if token_key else 0)

    def _attempt(
        self, model: str, tokens: int, tenant_id: str | None, priority: Priority
    ) -> RateReservation | _Full:
        try:
            return self._try(model, tokens, tenant_id, priority)
        except _Full as full:  # the transaction rolled back: nothing was taken
            return full
        except (SQLAlchemyError, StoreUnavailable) as exc:
            diagnostics.count(
                "rate_limit_store_failure",
                "graphthrift rate limit: store unavailable (%s); letting the call through",
                exc,
            )
            return RateReservation(None, 0)

    def queued(self, model: str, *, tenant_id: str | None = None) -> int:
        """Interactive callers (in every process) waiting for room in the model's buckets."""
        found = self.limit_for(model)
        if found is None:
            return 0
        name, limit = found
        kinds = [k for k, v in (("rpm", limit.rpm), ("tpm", limit.tpm)) if v is not None]
        total = 0
        with self.store.connect() as conn:
            for kind in kinds:
                key = self._key(kind, name, tenant_id)
                total += int(conn.execute(_COUNT_QUEUED, {"key": key}).scalar() or 0)
        return total

    def _enqueue(self, full: _Full, waiter: str, for_s: float) -> None:
        """Mark an interactive caller as waiting for ``full.key`` (until it is served, gives
        up, or ``for_s`` passes: a crashed caller holds nobody back for long)."""
        try:
            with self.store.connect() as conn:
                conn.execute(_ENQUEUE, {"key": full.key, "waiter": waiter, "for_s": for_s})
        except (SQLAlchemyError, StoreUnavailable) as exc:
            diagnostics.count("rate_limit_store_failure", "graphthrift rate limit: %s", exc)

    def _dequeue(self, waiter: str) -> None:
        try:
            with self.store.connect() as conn:
                conn.execute(_DEQUEUE, {"waiter": waiter})
                if self._rng.random() < 0.05:
                    conn.execute(_PURGE_WAITERS)
        except (SQLAlchemyError, StoreUnavailable) as exc:
            diagnostics.count("rate_limit_store_failure", "graphthrift rate limit: %s", exc)

    def _next_wait(self, full: _Full, waited: float) -> float | None:
        left = self.max_wait_s - waited
        if left <= 0:
            return None
        return min(left, full.wait_s() * (1.0 + 0.2 * self._rng.random()) + 0.01)

    def _shed(
        self, full: _Full, waited: float, priority: Priority, model: str, tenant_id: str | None
    ) -> RateLimited:
        diagnostics.count(f"rate_limit_shed_{priority}")
        shed = RateLimited(full.key, full.needed, full.available, waited, full.wait_s())
        book_decision(
            self.ledger,
            "rate_limited",
            tags={"tenant_id": tenant_id},
            model=model,
            error_type="rate_limit",
            success=False,
            extra={
                "limit": shed.limit,
                "needed": shed.needed,
                "available": shed.available,
                "waited_s": round(waited, 4),
                "priority": priority,
            },
        )
        return shed

    def acquire(
        self,
        model: str,
        *,
        tokens: int = 0,
        tenant_id: str | None = None,
        priority: Priority = "interactive",
    ) -> RateReservation:
        """Take one request and ``tokens`` from the model's buckets, waiting up to
        ``max_wait_s``; raises ``RateLimited`` when there is still no room."""
        started = time.monotonic()
        waiter: str | None = None
        try:
            while True:
                got = self._attempt(model, tokens, tenant_id, priority)
                if isinstance(got, RateReservation):
                    return got
                waited = time.monotonic() - started
                delay = self._next_wait(got, waited)
                if delay is None:
                    raise self._shed(got, waited, priority, model, tenant_id)
                if priority == "interactive" and waiter is None:
                    waiter = uuid.uuid4().hex
                    self._enqueue(got, waiter, self.max_wait_s - waited + 1.0)
                time.sleep(delay)
        finally:
            if waiter is not None:
                self._dequeue(waiter)

    async def aacquire(
        self,
        model: str,
        *,
        tokens: int = 0,
        tenant_id: str | None = None,
        priority: Priority = "interactive",
    ) -> RateReservation:
        """``acquire`` without blocking the event loop."""
        started = time.monotonic()
        waiter: str | None = None
        try:
            while True:
                got = await asyncio.to_thread(self._attempt, model, tokens, tenant_id, priority)
                if isinstance(got, RateReservation):
                    return got
                waited = time.monotonic() - started
                delay = self._next_wait(got, waited)
                if delay is None:
                    raise self._shed(got, waited, priority, model, tenant_id)
                if priority == "interactive" and waiter is None:
                    waiter = uuid.uuid4().hex
                    await asyncio.to_thread(
                        self._enqueue, got, waiter, self.max_wait_s - waited + 1.0
                    )
                await asyncio.sleep(delay)
        finally:
            if waiter is not None:
                await asyncio.to_thread(self._dequeue, waiter)

    def settle(self, reservation: RateReservation, *, used_tokens: int) -> None:
        """Return the reserved tokens the call did not use (or charge what it overran)."""
        if reservation.token_key is None or used_tokens == reservation.tokens:
            return
        try:
            with self.store.connect() as conn:
                conn.execute(
                    _GIVE,
                    {"key": reservation.token_key, "amount": reservation.tokens - used_tokens},
                )
        except (SQLAlchemyError, StoreUnavailable) as exc:
            diagnostics.count(
                "rate_limit_store_failure",
                "graphthrift rate limit: store unavailable (%s); usage not settled",
                exc,
            )
