"""A run's spend against its budget, counting the calls the provider billed but never delivered.

A call that times out on the client still ran at the provider, which bills it. Budgets that
count only delivered answers let a run pay for a timeout, then a retry or a dearer fallback,
and end over its budget without having seen it. ``RunBudget`` books a timed-out call as spent
(estimated from the request's counted input tokens plus its capped output), books delivered
calls at their real usage, and answers whether one more call on a model still fits the run:
``FailoverMiddleware`` skips candidates that do not, and ``ResilienceMiddleware`` stops
retrying when the next attempt would not fit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from graphthrift.errors import ConfigError
from graphthrift.ledger import cost_usd
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import TAG_FIELDS, LedgerRecord

__all__ = ["RunBudget"]


class RunBudget:
    """Per-run spend in this process, capped at ``max_usd`` per run (keyed by ``run_id``).

    Args:
        max_usd: what one run may spend on model calls, billed timeouts included.
        ledger: books each billed timeout as a ``kind="timeout_billed"`` row with its
            estimated ``cost_usd``, so reports show the money the client never got back.
        max_runs: runs remembered (the oldest are forgotten first).

    Runs without a ``run_id`` are not tracked (every call fits).
    """

    def __init__(
        self, max_usd: float, *, ledger: Ledger | None = None, max_runs: int = 100_000
    ) -> None:
        if isinstance(max_usd, bool) or not isinstance(max_usd, int | float) or not max_usd > 0:
            raise ConfigError("max_usd", max_usd, "must be a number > 0")
        self.max_usd = float(max_usd)
        self.ledger = ledger
        self.max_runs = max_runs
        self._spent: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def estimate(model: str, input_tokens: int, output_tokens: int) -> float:
        """The price of one call; an unpriced model prices at 0 (it cannot be judged)."""
        return cost_usd(model, input_tokens, output_tokens) or 0.0

    def spent(self, run_id: str | None) -> float:
        """What the run has spent so far."""
        if run_id is None:
            return 0.0
        with self._lock:
            return self._spent.get(run_id, 0.0)

    def fits(self, run_id: str | None, model: str, input_tokens: int, output_cap: int) -> bool:
        """Whether one more call on ``model`` (input plus capped output) stays in budget."""
        if run_id is None:
            return True
        cost = self.estimate(model, input_tokens, output_cap)
        return self.spent(run_id) + cost <= self.max_usd + 1e-12

    def charge(self, run_id: str | None, usd: float) -> None:
        """Add ``usd`` to the run's spend."""
        if run_id is None or usd <= 0:
            return
        with self._lock:
            self._spent[run_id] = self._spent.get(run_id, 0.0) + usd
            self._spent.move_to_end(run_id)
            while len(self._spent) > self.max_runs:
                self._spent.popitem(last=False)

    def charge_timeout(
        self, tags: Mapping[str, Any], model: str, input_tokens: int, output_cap: int
    ) -> float:
        """Book a timed-out call as spent (the provider bills it) and return the estimate."""
        usd = self.estimate(model, input_tokens, output_cap)
        run_id = tags.get("run_id")
        self.charge(None if run_id is None else str(run_id), usd)
        if self.ledger is not None:
            record = LedgerRecord(
                kind="timeout_billed",
                layer="resilience",
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_cap,
                cost_usd=usd,
                usage_source="estimated",
                error_type="timeout",
                success=False,
            )
            for name in TAG_FIELDS:
                if name != "model" and tags.get(name) is not None:
                    setattr(record, name, str(tags[name]))
            self.ledger.record(record)
        return usd
