"""Booking a deduplicated call in the ledger: a ``kind="dedup"`` row saying what it saved.

``FlightLayer`` is what ``SingleFlight`` and ``RequestDedup`` share: a flight engine, and
booking every caller served by another call's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from graphthrift import diagnostics
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.prices import PriceBook, default_price_book
from graphthrift.ledger.records import TAG_FIELDS, LedgerRecord
from graphthrift.resilience._flight import Answer, Codec, FlightEngine, FlightStats
from graphthrift.store.postgres import Store

T = TypeVar("T")


def book_dedup(
    ledger: Ledger | None,
    answer: Answer[Any],
    *,
    layer: str,
    tags: Mapping[str, Any],
    prices: PriceBook | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Book a caller served by another call's answer: ``saved_usd`` is what its own call
    would have cost, priced from the leader's usage (None when no usage or price is known)."""
    diagnostics.count(f"{layer}_dedup")
    if ledger is None or not answer.shared:
        return
    usage = answer.usage
    saved_usd = None
    saved_tokens = 0
    if usage is not None:
        saved_tokens = usage.input_tokens + usage.output_tokens
        if answer.model:
            saved_usd = (prices or default_price_book()).cost(
                answer.model, usage.input_tokens, usage.output_tokens, usage.cached_tokens
            )
    record = LedgerRecord(
        kind="dedup",
        layer=layer,
        model=answer.model,
        cost_usd=0.0,
        saved_usd=saved_usd,
        saved_tokens=saved_tokens,
        usage_source="provider" if usage is not None else "none",
        extra={"source": answer.source, **(extra or {})},
    )
    for name in TAG_FIELDS:
        if name != "model" and tags.get(name) is not None:
            setattr(record, name, str(tags[name]))
    ledger.record(record)


def book_decision(
    ledger: Ledger | None,
    kind: str,
    *,
    tags: Mapping[str, Any],
    model: str | None = None,
    error_type: str | None = None,
    attempt: int = 1,
    success: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Book a resilience decision that cost nothing itself (a retry, a shed call) as a
    zero-cost row, so a report shows why calls were retried or refused."""
    if ledger is None:
        return
    record = LedgerRecord(
        kind=kind,
        layer=kind,
        model=model,
        cost_usd=0.0,
        usage_source="none",
        error_type=error_type,
        retry=kind == "retry",
        attempt=attempt,
        success=success,
        extra=dict(extra or {}),
    )
    for name in TAG_FIELDS:
        if name != "model" and tags.get(name) is not None:
            setattr(record, name, str(tags[name]))
    try:
        ledger.record(record)
    except RuntimeError:  # a closed ledger: the decision stands, its row is counted
        diagnostics.count(f"{kind}_unbooked")


class FlightLayer:
    """A flight engine for ``layer``, whose shared answers are booked as dedup rows."""

    layer: ClassVar[str]

    def __init__(
        self,
        store: Store | None,
        *,
        ledger: Ledger | None,
        prices: PriceBook | None,
        window_s: float,
        keep_s: float,
        wait_timeout: float,
        poll_interval: float,
        codec: Codec,
    ) -> None:
        self.ledger = ledger
        self.prices = prices
        self.engine = FlightEngine(
            store,
            kind=self.layer,
            window_s=window_s,
            keep_s=keep_s,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            codec=codec,
        )

    @property
    def stats(self) -> FlightStats:
        """Calls made and answers shared by this process."""
        return self.engine.stats

    def _served(
        self,
        answer: Answer[T],
        tags: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> T:
        """``answer``'s value, booked first when it came from another caller's call."""
        if answer.shared:
            book_dedup(
                self.ledger, answer, layer=self.layer, tags=tags, prices=self.prices, extra=extra
            )
        return answer.value
