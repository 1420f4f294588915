"""Request-id dedup: a client's retry never generates again (seed 003).

A client that times out and retries with the same request id would pay for the generation
twice, and may get two different answers. ``RequestDedup`` keys a run by the caller's request
id (LangChain config metadata ``request_id``, or a header value in the middleware): a retry of
a request still running waits for it, in this process or another one, and a retry of one that
finished within ``window_s`` gets its stored final answer. A failed request stores nothing, so
its retry runs again.
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

__all__ = ["RequestDedup"]


class RequestDedup(FlightLayer):
    """Runs each caller-supplied request id once; retries wait for it or get its answer.

    Args:
        store: the shared ``Store``; None dedups only requests still running in this process.
        ledger: books every retry served without a call as a ``kind="dedup"`` row
            (``layer="request_id"``) with ``saved_usd``.
        prices: prices ``saved_usd`` (default: ``graphthrift.ledger.prices``).
        window_s: seconds a finished request's answer is served to its retries (600).
        wait_timeout: seconds a retry waits for the running request before running itself.
        poll_interval: seconds between checks of another process's lock.
        codec: turns answers to JSON and back for the store.

    A request id reused for a different request (another ``fingerprint``) within the window
    raises ``RequestIdConflict`` instead of serving a foreign answer. Ids are scoped: the
    same id under another tenant is another request.

    Example:
        >>> dedup = RequestDedup(store, ledger=ledger, window_s=900)
        >>> answer = dedup.call("req-7f3a", lambda: run_agent(question),
        ...                     scope={"tenant_id": "acme"}, fingerprint=hash_of(question))
    """

    layer = "request_id"

    def __init__(
        self,
        store: Store | None,
        *,
        ledger: Ledger | None = None,
        prices: PriceBook | None = None,
        window_s: float = 600.0,
        wait_timeout: float = 300.0,
        poll_interval: float = 0.1,
        codec: Codec = JSON_CODEC,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds, got {window_s!r}")
        super().__init__(
            store,
            ledger=ledger,
            prices=prices,
            window_s=window_s,
            keep_s=window_s,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            codec=codec,
        )
        self.window_s = window_s

    def _ticket(
        self,
        request_id: str,
        scope: Mapping[str, Any] | None,
        fingerprint: str | None,
        model: str | None,
        usage_of: Callable[[Any], Usage | None] | None,
        tags: Mapping[str, Any] | None,
    ) -> tuple[Ticket[Any], dict[str, Any]]:
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        return Ticket.for_call(
            self.layer,
            request_id,
            scope,
            model=model,
            usage_of=usage_of,
            tags=tags,
            fingerprint=fingerprint,
        )

    def call(
        self,
        request_id: str,
        fn: Callable[[], T],
        *,
        scope: Mapping[str, Any] | None = None,
        fingerprint: str | None = None,
        model: str | None = None,
        usage_of: Callable[[T], Usage | None] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> T:
        """``fn()`` once per request id: a retry waits for it, or gets its stored answer."""
        ticket, all_tags = self._ticket(request_id, scope, fingerprint, model, usage_of, tags)
        answer: Answer[T] = self.engine.run(ticket, fn)
        return self._served(answer, all_tags, {"request_id": request_id})

    async def acall(
        self,
        request_id: str,
        fn: Callable[[], Awaitable[T]],
        *,
        scope: Mapping[str, Any] | None = None,
        fingerprint: str | None = None,
        model: str | None = None,
        usage_of: Callable[[T], Usage | None] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> T:
        """``call`` for coroutines."""
        ticket, all_tags = self._ticket(request_id, scope, fingerprint, model, usage_of, tags)
        answer: Answer[T] = await self.engine.arun(ticket, fn)
        return self._served(answer, all_tags, {"request_id": request_id})
