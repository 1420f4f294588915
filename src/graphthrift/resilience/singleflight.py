"""Single-flight: identical concurrent requests make one provider call and share its answer.

A client that times out and retries, or a fan-out that asks the same thing twice, would pay
for the same generation again. ``SingleFlight`` lets the first caller of a key lead and
hands its answer to every caller that asked while it ran: threads and asyncio tasks of this
process, and other processes on the same PostgreSQL (an advisory lock keyed by a hash of the
key, the answer handed over through a row of ``graphthrift_flights``, written only when a
caller of another process is registered as waiting for it). A caller only ever
gets an answer finished after it asked, so nothing stale is served; this is not a cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.prices import PriceBook
from graphthrift.ledger.usage import Usage
from graphthrift.resilience._booking import FlightLayer
from graphthrift.resilience._flight import (
    JSON_CODEC,
    Answer,
    Codec,
    Ticket,
)
from graphthrift.store.postgres import Store

T = TypeVar("T")

__all__ = ["SingleFlight"]


class SingleFlight(FlightLayer):
    """One provider call per key and scope at a time, shared by every concurrent caller.

    Args:
        store: the shared ``Store`` for cross-process flights; None keeps them in-process.
        ledger: books every caller served by another's call as a ``kind="dedup"`` row.
        prices: prices ``saved_usd`` (default: ``graphthrift.ledger.prices``).
        wait_timeout: seconds a caller waits for the leader before calling itself.
        keep_s: seconds a finished answer stays in the store for waiters of other processes.
        poll_interval: seconds between checks of another process's lock.
        codec: turns answers to JSON and back for the store (default: JSON values as is).

    If the leader's call raises, the callers waiting in its process get the same error (a
    failing provider is not hit once more per waiter); waiters in other processes find no
    answer and call themselves. A store that is down degrades to in-process single-flight
    (counted as ``single_flight_store_failure``).

    Example:
        >>> flight = SingleFlight(store, ledger=ledger)
        >>> answer = flight.call(prompt_key, lambda: call_model(prompt),
        ...                      scope={"tenant_id": "acme"}, model="gpt-4o-mini",
        ...                      usage_of=lambda a: Usage(a["in"], a["out"]))
    """

    layer = "single_flight"

    def __init__(
        self,
        store: Store | None,
        *,
        ledger: Ledger | None = None,
        prices: PriceBook | None = None,
        wait_timeout: float = 60.0,
        keep_s: float = 60.0,
        poll_interval: float = 0.05,
        codec: Codec = JSON_CODEC,
    ) -> None:
        super().__init__(
            store,
            ledger=ledger,
            prices=prices,
            window_s=0.0,
            keep_s=keep_s,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            codec=codec,
        )

    def _ticket(
        self,
        key: str,
        scope: Mapping[str, Any] | None,
        model: str | None,
        usage_of: Callable[[Any], Usage | None] | None,
        tags: Mapping[str, Any] | None,
    ) -> tuple[Ticket[Any], dict[str, Any]]:  # Any: the caller's T
        return Ticket.for_call(self.layer, key, scope, model=model, usage_of=usage_of, tags=tags)

    def call(
        self,
        key: str,
        fn: Callable[[], T],
        *,
        scope: Mapping[str, Any] | None = None,
        model: str | None = None,
        usage_of: Callable[[T], Usage | None] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> T:
        """``fn()``, or the answer of the identical call already running.

        ``key`` names the request (e.g. a hash of model, settings and messages); ``scope``
        (tenant, user, ...) is part of the key, so tenants never share answers; ``tags``
        go on the ledger row only.
        """
        ticket, all_tags = self._ticket(key, scope, model, usage_of, tags)
        answer: Answer[T] = self.engine.run(ticket, fn)
        return self._served(answer, all_tags)

    async def acall(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        *,
        scope: Mapping[str, Any] | None = None,
        model: str | None = None,
        usage_of: Callable[[T], Usage | None] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> T:
        """``call`` for coroutines; flights are shared with this process's threads."""
        ticket, all_tags = self._ticket(key, scope, model, usage_of, tags)
        answer: Answer[T] = await self.engine.arun(ticket, fn)
        return self._served(answer, all_tags)
