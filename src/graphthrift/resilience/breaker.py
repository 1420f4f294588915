"""Circuit breakers and cost-aware failover across equivalent models.

A provider that is down answers every call with an error after a timeout: calling it anyway
costs latency and retries. ``CircuitBreaker`` opens a model's circuit when its error rate over
a window passes a threshold, refuses calls while open, and half-opens after ``open_s`` to let
one probe through. Only errors that say the provider is unwell count (rate limits, timeouts,
upstream errors); a bad request is the caller's fault and does not.

``Failover`` tries an ordered list of equivalent models: it skips those whose circuit is open
and those that would break the run's budget (``fits``), records why, and moves on when a
candidate fails with a provider error. Every decision is a ledger row ``kind="failover"``.
Breakers are per process (each process learns a provider's health from its own calls).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from graphthrift import diagnostics
from graphthrift.errors import NoCandidateLeft, RetryBudgetExhausted, classify_error
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import LedgerRecord
from graphthrift.resilience.retry import RETRYABLE

T = TypeVar("T")

__all__ = ["CircuitBreaker", "Failover"]

State = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class _Circuit:
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    state: State = "closed"
    opened_at: float = 0.0
    probes: int = 0


class CircuitBreaker:
    """One circuit per model: opens on an error rate over a window, half-opens to probe.

    Args:
        window_s: the window the error rate is measured over.
        min_calls: calls needed in the window before the circuit may open.
        error_rate: the share of failed calls that opens it.
        open_s: seconds it stays open before letting a probe through.
        probes: calls let through while half-open.
        clock: the time source (tests pass their own).
    """

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        min_calls: int = 5,
        error_rate: float = 0.5,
        open_s: float = 30.0,
        probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_s > 0 or not open_s > 0:
            raise ValueError(f"window_s and open_s must be > 0, got {window_s!r}, {open_s!r}")
        if not 0 < error_rate <= 1:
            raise ValueError(f"error_rate must be in (0, 1], got {error_rate!r}")
        if min_calls < 1 or probes < 1:
            raise ValueError(f"min_calls and probes must be >= 1, got {min_calls}, {probes}")
        self.window_s = window_s
        self.min_calls = min_calls
        self.error_rate = error_rate
        self.open_s = open_s
        self.probes = probes
        self.clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def state(self, model: str) -> State:
        """The model's circuit now (an open one past ``open_s`` reads as half-open)."""
        with self._lock:
            circuit = self._circuits.get(model)
            if circuit is None:
                return "closed"
            if circuit.state == "open" and self.clock() - circuit.opened_at >= self.open_s:
                return "half_open"
            return circuit.state

    def allow(self, model: str) -> bool:
        """Whether a call to ``model`` may go now (taking a probe slot when half-open)."""
        with self._lock:
            circuit = self._circuits.setdefault(model, _Circuit())
            if circuit.state == "closed":
                return True
            if circuit.state == "open":
                if self.clock() - circuit.opened_at < self.open_s:
                    return False
                circuit.state, circuit.probes = "half_open", 0
            if circuit.probes < self.probes:
                circuit.probes += 1
                return True
            return False

    def record(self, model: str, error: BaseException | None) -> None:
        """Count a call's outcome; a provider error may open the circuit."""
        failed = error is not None and classify_error(error) in RETRYABLE
        now = self.clock()
        with self._lock:
            circuit = self._circuits.setdefault(model, _Circuit())
            if circuit.state == "half_open":
                if failed:
                    circuit.state, circuit.opened_at = "open", now
                    diagnostics.count("circuit_reopened")
                else:
                    self._circuits[model] = _Circuit()
                    diagnostics.count("circuit_closed")
                return
            circuit.outcomes.append((now, failed))
            while circuit.outcomes and circuit.outcomes[0][0] < now - self.window_s:
                circuit.outcomes.popleft()
            calls = len(circuit.outcomes)
            errors = sum(1 for _, bad in circuit.outcomes if bad)
            if (
                circuit.state == "closed"
                and calls >= self.min_calls
                and errors / calls >= self.error_rate
            ):
                circuit.state, circuit.opened_at = "open", now
                diagnostics.count(
                    "circuit_opened",
                    "graphthrift: circuit of %s opened (%d of %d calls failed in %.0fs)",
                    model,
                    errors,
                    calls,
                    self.window_s,
                )


class Failover:
    """Tries equivalent models in order, skipping open circuits and over-budget candidates.

    Args:
        models: the candidates, best first (e.g. ``["openai:gpt-4o-mini",
            "anthropic:claude-haiku-4-5"]``).
        breaker: the ``CircuitBreaker``.
        fits: ``model -> bool``: whether this call on ``model`` stays within the run's budget
            (e.g. a ``Budget`` check); a candidate that does not fit is skipped.
        ledger: where each decision is written (``kind="failover"``).

    Errors that are not the provider's (a bad request) are raised at once: another provider
    would refuse the same request.
    """

    def __init__(
        self,
        models: Sequence[str],
        *,
        breaker: CircuitBreaker | None = None,
        fits: Callable[[str], bool] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        if not models:
            raise ValueError("Failover needs at least one model")
        self.models = list(models)
        self.breaker = breaker or CircuitBreaker()
        self.fits = fits
        self.ledger = ledger

    def _skip_reason(self, model: str) -> str | None:
        if self.fits is not None and not self.fits(model):
            return "over budget"
        if not self.breaker.allow(model):
            return "circuit open"
        return None

    def _book(self, chosen: str | None, reasons: dict[str, str], tags: Mapping[str, Any]) -> None:
        if self.ledger is None or (chosen == self.models[0] and not reasons):
            return
        tenant = tags.get("tenant_id")
        run_id = tags.get("run_id")
        self.ledger.record(
            LedgerRecord(
                kind="failover",
                layer="failover",
                model=chosen,
                tenant_id=None if tenant is None else str(tenant),
                run_id=None if run_id is None else str(run_id),
                cost_usd=0.0,
                usage_source="none",
                success=chosen is not None,
                extra={"chosen": chosen, "skipped": reasons},
            )
        )

    def _failed(self, model: str, exc: BaseException, reasons: dict[str, str]) -> None:
        """Record a candidate's failure and move on, or raise when no other model would do
        better (a bad request). A spent retry budget moves on too: it caps retries of this
        provider, not a first attempt on the next one."""
        cause = exc
        if isinstance(exc, RetryBudgetExhausted) and exc.__cause__ is not None:
            cause = exc.__cause__
        self.breaker.record(model, cause)
        kind = classify_error(cause)
        if kind not in RETRYABLE:
            raise exc
        reasons[model] = kind if cause is exc else f"retry budget spent ({kind})"

    def call(self, fn: Callable[[str], T], *, tags: Mapping[str, Any] | None = None) -> T:
        """``fn(model)`` on the first candidate that is allowed, fits and answers."""
        reasons: dict[str, str] = {}
        last: BaseException | None = None
        for model in self.models:
            why = self._skip_reason(model)
            if why is not None:
                reasons[model] = why
                continue
            try:
                value = fn(model)
            except Exception as exc:
                self._failed(model, exc, reasons)
                last = exc
                continue
            self.breaker.record(model, None)
            self._book(model, reasons, tags or {})
            return value
        self._book(None, reasons, tags or {})
        raise NoCandidateLeft(reasons) from last

    async def acall(
        self, fn: Callable[[str], Awaitable[T]], *, tags: Mapping[str, Any] | None = None
    ) -> T:
        """``call`` for coroutines."""
        reasons: dict[str, str] = {}
        last: BaseException | None = None
        for model in self.models:
            why = self._skip_reason(model)
            if why is not None:
                reasons[model] = why
                continue
            try:
                value = await fn(model)
            except Exception as exc:
                self._failed(model, exc, reasons)
                last = exc
                continue
            self.breaker.record(model, None)
            self._book(model, reasons, tags or {})
            return value
        self._book(None, reasons, tags or {})
        raise NoCandidateLeft(reasons) from last
