"""Circuit breakers and cost-aware failover across equivalent models.

A provider that is down answers every call with an error after a timeout: calling it anyway
costs latency and retries. ``CircuitBreaker`` opens a model's circuit when its error rate over
a window passes a threshold, refuses calls while open, and half-opens after ``open_s`` to let
one probe through. Only errors that say the provider is unwell count (timeouts, upstream
errors); a bad request is the caller's fault and a rate limit says the provider is up, so
neither does.

``Failover`` tries an ordered list of equivalent models: it skips those whose circuit is open
and those that would break the run's budget (``fits``), records why, and moves on when a
candidate fails with a provider error. A ``Retrier`` inside a candidate's call reports each
failed attempt to the breaker (``RETRY_GATE``) and stops retrying once the circuit opens.
Every decision is a ledger row ``kind="failover"``.
Breakers are per process, or, given a store, shared by every process on it.

Long because: the failover is the breaker's one reader, and each of its rules (probes, the
last resort, the second chance, answers no provider made) has a sync and an async path.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.errors import (
    ConfigError,
    NoCandidateLeft,
    RetryBudgetExhausted,
    StoreUnavailable,
    classify_error,
)
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import LedgerRecord
from graphthrift.resilience.retry import RETRY_GATE, RETRYABLE
from graphthrift.resilience.schema import CIRCUITS_TABLE
from graphthrift.store.postgres import Store

T = TypeVar("T")

__all__ = ["CircuitBreaker", "Failover"]

State = Literal["closed", "open", "half_open"]

#: Error kinds that say a provider is unwell. A rate limit is not one: the provider answered,
#: and its ``retry-after`` says when to come back (the ``Retrier`` honours it).
_OUTAGE: frozenset[str | None] = frozenset(RETRYABLE - {"rate_limit"})
#: Outcomes a shared circuit keeps (the most recent): enough for an error rate, a small row.
_KEEP_OUTCOMES = 200


@dataclass(slots=True)
class _Circuit:
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    state: State = "closed"
    opened_at: float = 0.0
    probes: int = 0
    streak: int = 0  # outage failures in a row
    wait_s: float = 0.0  # seconds from opened_at to the next probe (0: the breaker's first)

    def to_json(self, keep: int) -> str:
        outcomes = [[t, bad] for t, bad in list(self.outcomes)[-keep:]]
        return json.dumps(
            {
                "outcomes": outcomes,
                "state": self.state,
                "opened_at": self.opened_at,
                "probes": self.probes,
                "streak": self.streak,
                "wait_s": self.wait_s,
            }
        )

    @classmethod
    def from_json(cls, raw: Any) -> _Circuit:
        data = json.loads(raw) if isinstance(raw, str) else raw
        return cls(
            outcomes=deque((float(t), bool(bad)) for t, bad in data["outcomes"]),
            state=data["state"],
            opened_at=float(data["opened_at"]),
            probes=int(data["probes"]),
            streak=int(data["streak"]),
            wait_s=float(data.get("wait_s", 0.0)),
        )


_ENSURE = text(f"""
    INSERT INTO {CIRCUITS_TABLE} (model, data) VALUES (:model, CAST(:data AS jsonb))
    ON CONFLICT (model) DO NOTHING
""")
_LOCK_ROW = text(f"SELECT data FROM {CIRCUITS_TABLE} WHERE model = :model FOR UPDATE")
_READ_ROW = text(f"SELECT data FROM {CIRCUITS_TABLE} WHERE model = :model")
_SAVE = text(f"""
    UPDATE {CIRCUITS_TABLE} SET data = CAST(:data AS jsonb), updated_at = now()
    WHERE model = :model
""")


class CircuitBreaker:
    """One circuit per model: opens on an error rate over a window, half-opens to probe.

    Args:
        window_s: the window the error rate is measured over.
        min_calls: calls needed in the window before the circuit may open.
        error_rate: the share of failed calls that opens it.
        consecutive: failures in a row that open it whatever the window's rate (a provider
            that goes down after a long healthy stretch keeps a low rate for a while).
        open_s: the longest it stays open before letting a probe through.
        probe_after_s: seconds after opening before the first probe (default ``open_s / 6``).
            A probe that timed out (the provider bills it) doubles the wait, up to ``open_s``;
            one refused at once (a 5xx, not billed) costs only its latency, so the wait stays
            short. A short wait returns traffic to the primary soon after an outage ends,
            instead of paying the dearer fallback for the whole ``open_s``.
        probes: calls let through while half-open.
        probe_wait_s: while a probe is in flight, how long a ``Failover`` caller waits for
            its outcome before going to the next candidate (0: it does not wait). Waiting
            costs latency; going on costs the dearer candidate's price, and right after an
            outage a whole wave of callers would pay it while one probe is answered.
        store: share every circuit through PostgreSQL (``graphthrift_circuits``): a provider
            one process found down is skipped by all, and half-open probes are counted across
            processes. Without it, each process learns a provider's health on its own. A store
            that is down falls back to this process's own circuits (counted).
        clock: the time source (tests pass their own); with a store, wall-clock seconds.
    """

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        min_calls: int = 5,
        error_rate: float = 0.5,
        open_s: float = 30.0,
        probes: int = 1,
        consecutive: int = 5,
        probe_after_s: float | None = None,
        probe_wait_s: float = 0.0,
        store: Store | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not window_s > 0 or not open_s > 0:
            raise ValueError(f"window_s and open_s must be > 0, got {window_s!r}, {open_s!r}")
        if not 0 < error_rate <= 1:
            raise ValueError(f"error_rate must be in (0, 1], got {error_rate!r}")
        if min_calls < 1 or probes < 1:
            raise ValueError(f"min_calls and probes must be >= 1, got {min_calls}, {probes}")
        if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
            raise ConfigError("consecutive", consecutive, "must be an int >= 1")
        if probe_after_s is not None and not 0 < probe_after_s <= open_s:
            raise ConfigError("probe_after_s", probe_after_s, f"must be in (0, open_s={open_s}]")
        self.consecutive = consecutive
        self.probe_after_s = open_s / 6 if probe_after_s is None else probe_after_s
        if not probe_wait_s >= 0:
            raise ConfigError("probe_wait_s", probe_wait_s, "must be >= 0")
        self.probe_wait_s = probe_wait_s
        self.window_s = window_s
        self.min_calls = min_calls
        self.error_rate = error_rate
        self.open_s = open_s
        self.probes = probes
        self.store = store
        # processes share wall-clock time; a process's own monotonic clock suits one process
        self.clock = clock or (time.time if store is not None else time.monotonic)
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    @contextmanager
    def _circuit(self, model: str, *, write: bool = True) -> Iterator[_Circuit]:
        """The model's circuit, locked (in this process, and with a store in every process)
        while the block runs, and saved after it."""
        with self._lock:
            if self.store is None:
                yield self._circuits.setdefault(model, _Circuit())
                return
            used = False
            try:
                with self.store.connect() as conn:
                    if write:
                        conn.execute(_ENSURE, {"model": model, "data": _Circuit().to_json(0)})
                        raw = conn.execute(_LOCK_ROW, {"model": model}).scalar()
                    else:
                        raw = conn.execute(_READ_ROW, {"model": model}).scalar()
                    circuit = _Circuit() if raw is None else _Circuit.from_json(raw)
                    used = True
                    yield circuit
                    if write:
                        data = circuit.to_json(_KEEP_OUTCOMES)
                        conn.execute(_SAVE, {"model": model, "data": data})
                self._circuits[model] = circuit  # the fallback if the store goes down
                return
            except (SQLAlchemyError, StoreUnavailable) as exc:
                diagnostics.count(
                    "circuit_store_failure",
                    "graphthrift circuit breaker: store unavailable (%s); using this "
                    "process's own circuits",
                    exc,
                )
                if used:  # the block ran; only its saving failed
                    return
            yield self._circuits.setdefault(model, _Circuit())

    def state(self, model: str) -> State:
        """The model's circuit now (an open one past ``open_s`` reads as half-open)."""
        with self._circuit(model, write=False) as circuit:
            if circuit.state == "open" and self.clock() - circuit.opened_at >= self._wait(circuit):
                return "half_open"
            return circuit.state

    def _wait(self, circuit: _Circuit) -> float:
        """Seconds from the circuit's opening to its next probe."""
        return circuit.wait_s if circuit.wait_s > 0 else self.probe_after_s

    def allow(self, model: str) -> bool:
        """Whether a call to ``model`` may go now (taking a probe slot when half-open)."""
        with self._circuit(model) as circuit:
            if circuit.state == "closed":
                return True
            if circuit.state == "open":
                if self.clock() - circuit.opened_at < self._wait(circuit):
                    return False
                circuit.state, circuit.probes = "half_open", 0
            if circuit.probes < self.probes:
                circuit.probes += 1
                return True
            return False

    def admit(self, model: str) -> bool:
        """``allow``, or, while a probe of ``model`` is in flight, wait up to
        ``probe_wait_s`` for its outcome: allowed once it closes the circuit, refused once it
        reopens it or the wait ends."""
        if self.allow(model):
            return True
        if self.probe_wait_s <= 0 or self.state(model) != "half_open":
            return False
        deadline = time.monotonic() + self.probe_wait_s
        pause = min(0.005, self.probe_wait_s / 10)
        while time.monotonic() < deadline:
            time.sleep(pause)
            if self.state(model) == "open":
                return False
            if self.allow(model):
                diagnostics.count("failover_waited_for_probe")
                return True
        return False

    def release(self, model: str) -> None:
        """A call ``allow`` let through that reached no provider (a budget's stop answered
        it): it tells nothing, so nothing is counted and a probe slot it took is freed."""
        with self._circuit(model) as circuit:
            if circuit.state == "half_open":
                circuit.probes = max(0, circuit.probes - 1)

    def record(self, model: str, error: BaseException | None) -> None:
        """Count a call's outcome; a provider error may open the circuit."""
        kind = None if error is None else classify_error(error)
        failed = kind in _OUTAGE
        now = self.clock()
        with self._circuit(model) as circuit:
            if kind == "rate_limit":  # up, but asks to come back later: not an outage
                if circuit.state == "half_open":
                    circuit.probes = max(0, circuit.probes - 1)  # the probe told nothing
                return
            if circuit.state == "half_open":
                if failed:
                    circuit.state, circuit.opened_at = "open", now
                    if kind == "timeout":  # a billed probe: probe a long outage less often
                        circuit.wait_s = min(self.open_s, 2 * self._wait(circuit))
                    diagnostics.count("circuit_reopened")
                else:
                    circuit.outcomes.clear()
                    circuit.state, circuit.probes, circuit.streak = "closed", 0, 0
                    circuit.wait_s = 0.0
                    diagnostics.count("circuit_closed")
                return
            circuit.outcomes.append((now, failed))
            while circuit.outcomes and circuit.outcomes[0][0] < now - self.window_s:
                circuit.outcomes.popleft()
            circuit.streak = circuit.streak + 1 if failed else 0
            calls = len(circuit.outcomes)
            errors = sum(1 for _, bad in circuit.outcomes if bad)
            if circuit.state == "closed" and (
                circuit.streak >= self.consecutive
                or (calls >= self.min_calls and errors / calls >= self.error_rate)
            ):
                circuit.state, circuit.opened_at, circuit.wait_s = "open", now, 0.0
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
        answered: ``value -> bool``, whether a candidate's value came from its provider;
            a value that did not (a budget's stop message) is neither a success nor a
            failure of that provider's circuit.

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
        answered: Callable[[Any], bool] | None = None,
    ) -> None:
        if not models:
            raise ValueError("Failover needs at least one model")
        self.models = list(models)
        self.breaker = breaker or CircuitBreaker()
        self.fits = fits
        self.ledger = ledger
        self.answered = answered

    def _succeeded(self, model: str, value: Any) -> None:
        """Count a candidate's answer as its provider's success, unless no provider made it."""
        if self.answered is not None and not self.answered(value):
            self.breaker.release(model)
        else:
            self.breaker.record(model, None)

    def _skip_reason(
        self, model: str, reasons: Mapping[str, str], *, wait: bool = True
    ) -> str | None:
        if self.fits is not None and not self.fits(model):
            return "over budget"
        allowed = self.breaker.admit(model) if wait else self.breaker.allow(model)
        if not allowed:
            if model == self.models[-1] and all(r == "circuit open" for r in reasons.values()):
                # every circuit open: the breaker spares a provider while another can answer,
                # it must not fail the run without one call; the last resort is asked
                diagnostics.count("failover_last_resort")
                return None
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

    def _gate(self, model: str, seen: list[BaseException]) -> Callable[[BaseException], bool]:
        """The ``RETRY_GATE`` for one candidate: every failed attempt counts towards its
        circuit, and retrying stops once the circuit opens (unless no candidate is left, or
        the error is a rate limit: the provider is up and its ``retry-after`` is cheaper to
        wait out than the next candidate's price)."""
        last = model == self.models[-1]

        def gate(exc: BaseException) -> bool:
            self.breaker.record(model, exc)
            seen.append(exc)
            if last or classify_error(exc) == "rate_limit":
                # a 429 says the provider is up: waiting out its retry-after costs this
                # candidate's price once more, failing over costs the next (dearer) one's
                return True
            return self.breaker.state(model) == "closed"

        return gate

    def _failed(
        self, model: str, exc: BaseException, reasons: dict[str, str], seen: list[BaseException]
    ) -> None:
        """Record a candidate's failure and move on, or raise when no other model would do
        better (a bad request). A spent retry budget moves on too: it caps retries of this
        provider, not a first attempt on the next one."""
        cause = exc
        if isinstance(exc, RetryBudgetExhausted) and exc.__cause__ is not None:
            cause = exc.__cause__
        if not any(cause is counted for counted in seen):  # the gate counted it already
            self.breaker.record(model, cause)
        kind = classify_error(cause)
        if kind not in RETRYABLE:
            raise exc
        reasons[model] = kind if cause is exc else f"retry budget spent ({kind})"

    def _second_chance(self, reasons: Mapping[str, str]) -> str | None:
        """When the run's budget refused a candidate, the first one that failed with a
        transient error and still fits gets one more go: retrying the cheaper model costs
        less than failing the run, and the dearer one cannot be paid for."""
        if "over budget" not in reasons.values():
            return None
        for model in self.models:
            if reasons.get(model) not in RETRYABLE:
                continue
            if (self.fits is None or self.fits(model)) and self.breaker.allow(model):
                diagnostics.count("failover_second_chance")
                return model
        return None

    def call(self, fn: Callable[[str], T], *, tags: Mapping[str, Any] | None = None) -> T:
        """``fn(model)`` on the first candidate that is allowed, fits and answers."""
        reasons: dict[str, str] = {}
        last: BaseException | None = None
        for model in self.models:
            why = self._skip_reason(model, reasons)
            if why is not None:
                reasons[model] = why
                continue
            seen: list[BaseException] = []
            token = RETRY_GATE.set(self._gate(model, seen))
            try:
                value = fn(model)
            except Exception as exc:
                self._failed(model, exc, reasons, seen)
                last = exc
                continue
            finally:
                RETRY_GATE.reset(token)
            self._succeeded(model, value)
            self._book(model, reasons, tags or {})
            return value
        again = self._second_chance(reasons)
        if again is not None:
            seen = []
            token = RETRY_GATE.set(self._gate(again, seen))
            try:
                value = fn(again)
            except Exception as exc:
                self._failed(again, exc, reasons, seen)
                last = exc
            else:
                self._succeeded(again, value)
                self._book(again, reasons, tags or {})
                return value
            finally:
                RETRY_GATE.reset(token)
        self._book(None, reasons, tags or {})
        raise NoCandidateLeft(reasons) from last

    async def acall(
        self, fn: Callable[[str], Awaitable[T]], *, tags: Mapping[str, Any] | None = None
    ) -> T:
        """``call`` for coroutines."""
        reasons: dict[str, str] = {}
        last: BaseException | None = None
        for model in self.models:
            why = self._skip_reason(model, reasons, wait=False)  # no blocking wait in a loop
            if why is not None:
                reasons[model] = why
                continue
            seen: list[BaseException] = []
            token = RETRY_GATE.set(self._gate(model, seen))
            try:
                value = await fn(model)
            except Exception as exc:
                self._failed(model, exc, reasons, seen)
                last = exc
                continue
            finally:
                RETRY_GATE.reset(token)
            self._succeeded(model, value)
            self._book(model, reasons, tags or {})
            return value
        again = self._second_chance(reasons)
        if again is not None:
            seen = []
            token = RETRY_GATE.set(self._gate(again, seen))
            try:
                value = await fn(again)
            except Exception as exc:
                self._failed(again, exc, reasons, seen)
                last = exc
            else:
                self._succeeded(again, value)
                self._book(again, reasons, tags or {})
                return value
            finally:
                RETRY_GATE.reset(token)
        self._book(None, reasons, tags or {})
        raise NoCandidateLeft(reasons) from last
