"""What a settled call actually cost, and the settlements kept while the store is down.

A call is priced at the model actually called, with prompt-cache reads and writes at
their own rates (as the ledger prices them); a call that wrote more than it reserved is
counted (``budget_output_overrun``). Spend settled while the store was unreachable is real
spend (issue 12, item 8): ``PendingCharges`` keeps it, bounded, to charge it later.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from graphthrift import diagnostics
from graphthrift.budget.reservation import Reservation
from graphthrift.ledger.prices import PriceBook
from graphthrift.ledger.records import LedgerRecord
from graphthrift.ledger.usage import read_usage

__all__ = ["Charge", "PendingCharges", "actual_cost", "check_settle_cost"]

#: A settlement: the reservation, its actual USD and tokens.
Charge = tuple[Reservation, float, int]


def check_settle_cost(value: Any) -> float | None:
    """A settle's ``cost_usd``: a finite number >= 0, else a clear, counted error.

    A negative cost would let a tenant spend past its limit, a NaN or inf would lock it out
    for the day (issue 12, item 8); the reservation stays open (and expires) instead.
    """
    if value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if not bad and math.isfinite(value) and value >= 0:
        return float(value)
    diagnostics.count("budget_bad_settle")
    raise ValueError(f"settle cost_usd must be a finite number >= 0, got {value!r}")


def actual_cost(
    prices: PriceBook,
    r: Reservation,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_tokens: int,
    cost_usd: float | None,
    record: LedgerRecord | None,
    model: str | None = None,
    calls: Sequence[tuple[str | None, Any]] | None = None,
) -> tuple[float, int]:
    """The call's actual cost and tokens, priced at the model that was actually called."""
    cost_usd = check_settle_cost(cost_usd)
    if calls is not None:
        return _calls_cost(prices, r, calls)
    model = model or r.estimate.model
    if record is not None:
        input_tokens, output_tokens = record.input_tokens, record.output_tokens
        cached_tokens, cost_usd = record.cached_tokens, check_settle_cost(record.cost_usd)
        model = record.model or model
    if input_tokens is None:
        input_tokens = r.estimate.input_tokens
    if output_tokens is None:
        output_tokens = r.estimate.output_tokens
    for label, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("cached_tokens", cached_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            diagnostics.count("budget_bad_settle")
            raise ValueError(f"settle {label} must be an int >= 0, got {value!r}")
    _check_overrun(r, output_tokens)
    if cost_usd is None:
        cost_usd = _price(prices, model, r, input_tokens, output_tokens, cached_tokens)
    return cost_usd, input_tokens + output_tokens


def _check_overrun(r: Reservation, output_tokens: int) -> None:
    """Count a call that wrote more than it reserved (a model that ignores its cap).

    Its real cost is settled all the same, so the next reservation sees it and is
    refused; the bound on overspend then depends on the calls in flight (README).
    """
    if output_tokens > r.estimate.output_tokens:
        diagnostics.count(
            "budget_output_overrun",
            "graphthrift: a call wrote %d output tokens, %d were reserved (%s)",
            output_tokens,
            r.estimate.output_tokens,
            r.estimate.model,
        )


def _price(
    prices: PriceBook,
    model: str,
    r: Reservation,
    inp: int,
    out: int,
    cached: int,
    writes: int = 0,
    writes_1h: int = 0,
) -> float:
    """``model``'s price of the usage (prompt-cache writes at their own rates, as the
    ledger prices them); an unpriced model falls back to the reserved one's."""

    def price(name: str) -> float | None:
        return prices.cost(
            name, inp, out, cached, cache_write_tokens=writes, cache_write_1h_tokens=writes_1h
        )

    cost = price(model) if prices.is_known(model) else None
    if cost is None and model != r.estimate.model:
        diagnostics.count(
            "budget_unpriced_settle",
            "graphthrift: no price for %r; settling at %r's price",
            model,
            r.estimate.model,
        )
        cost = price(r.estimate.model)
    return float(cost or 0.0)


def _calls_cost(
    prices: PriceBook, r: Reservation, calls: Sequence[tuple[str | None, Any]]
) -> tuple[float, int]:
    """Sum the calls one reservation covered (a cascade: the cheap call and the strong one)."""
    usd, tokens = 0.0, 0
    for name, raw in calls:
        usage = read_usage(raw)
        writes = writes_1h = 0
        if usage is None:  # no usage reported: the reserved worst case
            inp, out, cached = r.estimate.input_tokens, r.estimate.output_tokens, 0
        else:
            inp, out, cached = usage.input_tokens, usage.output_tokens, usage.cached_tokens
            writes, writes_1h = usage.cache_write_tokens, usage.cache_write_1h_tokens
            _check_overrun(r, out)
        usd += _price(prices, name or r.estimate.model, r, inp, out, cached, writes, writes_1h)
        tokens += inp + out
    return usd, tokens


class PendingCharges:
    """Settlements the store could not take, kept (at most ``limit``) to charge later.

    The queue is bounded; what falls off it is counted (``budget_pending_dropped``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._queue: deque[Charge] = deque()
        self._lock = threading.Lock()

    def defer(self, r: Reservation, usd: float, tokens: int) -> None:
        """Keep a settlement the store could not take, to charge it when the store answers."""
        if not r.scopes or (usd == 0.0 and tokens == 0 and not r.backed):
            return
        with self._lock:
            if len(self._queue) >= self.limit:
                self._queue.popleft()
                diagnostics.count(
                    "budget_pending_dropped",
                    "graphthrift: budget pending queue full (%d); oldest charge dropped",
                    self.limit,
                )
            self._queue.append((r, usd, tokens))

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def pop(self) -> Charge | None:
        """The oldest kept settlement, or None."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def requeue(self, item: Charge) -> None:
        """Put back a settlement the store still could not take (it stays the oldest)."""
        with self._lock:
            self._queue.appendleft(item)
