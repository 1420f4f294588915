"""Graceful restart: on SIGTERM, drain, flush the ledger, release what is still reserved.

A deploy that kills workers mid-call drops the user's request, loses ledger rows still queued
in memory and strands budget reservations until they expire. ``GracefulShutdown`` makes the
restart clean: once draining, it refuses new work (``ShuttingDown``), lets the calls in flight
finish within ``grace_s``, releases the budget reservations of calls that did not, and flushes
the ledger. On ``kill -9`` nothing runs: what the ledger already flushed stays, and the budget's
reservations expire (``reservation_ttl``) and are reclaimed by the next ``Budget.reclaim``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from graphthrift import diagnostics
from graphthrift.budget.budget import Budget, Reservation
from graphthrift.errors import ShuttingDown
from graphthrift.ledger.ledger import Ledger, LedgerFlushTimeout

__all__ = ["DrainReport", "GracefulShutdown"]


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a drain did: calls that finished in time and that did not, reservations
    released, and whether the ledger was flushed."""

    finished: int
    abandoned: int
    released: int
    ledger_flushed: bool
    waited_s: float


class GracefulShutdown:
    """Stop taking work, finish what is in flight, flush the ledger, release reservations.

    Args:
        ledger: the ``Ledger`` to flush.
        budget: the ``Budget`` whose held reservations (``hold``) are released when their
            call does not finish within the grace period.
        grace_s: seconds the calls in flight get to finish.
        on_drained: called after a signal-driven drain (default: ``SystemExit(0)`` in the
            main thread, so ``atexit`` hooks run and the process exits cleanly).

    Example:
        >>> shutdown = GracefulShutdown(ledger=ledger, budget=budget, grace_s=20)
        >>> shutdown.install()                   # SIGTERM drains, then exits
        >>> with shutdown.work():                # raises ShuttingDown while draining
        ...     answer = agent.invoke(...)
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None = None,
        budget: Budget | None = None,
        grace_s: float = 30.0,
        on_drained: Callable[[DrainReport], None] | None = None,
    ) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0 seconds, got {grace_s!r}")
        self.ledger = ledger
        self.budget = budget
        self.grace_s = grace_s
        self.on_drained = on_drained
        self.report: DrainReport | None = None
        self._cond = threading.Condition()
        self._draining = False
        self._in_flight = 0
        self._started = 0
        self._held: dict[str, Reservation] = {}

    @property
    def draining(self) -> bool:
        """Whether new work is refused."""
        with self._cond:
            return self._draining

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        with self._cond:
            return self._in_flight

    @contextmanager
    def work(self) -> Iterator[None]:
        """Run one unit of work, or raise ``ShuttingDown`` if the process is draining."""
        with self._cond:
            if self._draining:
                diagnostics.count("shutdown_refused")
                raise ShuttingDown(self._in_flight, self.grace_s)
            self._in_flight += 1
            self._started += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def hold(self, reservation: Reservation) -> None:
        """Track a budget reservation until ``drop``, so a drain can release it."""
        with self._cond:
            self._held[reservation.id] = reservation

    def drop(self, reservation: Reservation) -> None:
        """The reservation was settled or released by its call."""
        with self._cond:
            self._held.pop(reservation.id, None)

    def drain(self) -> DrainReport:
        """Refuse new work, wait for the calls in flight (up to ``grace_s``), release the
        reservations still held, flush the ledger."""
        started = time.monotonic()
        deadline = started + self.grace_s
        with self._cond:
            self._draining = True
            at_start = self._in_flight
            while self._in_flight > 0 and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            abandoned = self._in_flight
            held = list(self._held.values())
            self._held.clear()
        released = 0
        if self.budget is not None:
            for reservation in held:
                if not reservation.settled:
                    self.budget.release(reservation)
                    released += 1
        flushed = True
        if self.ledger is not None:
            try:
                self.ledger.flush(timeout=max(1.0, deadline - time.monotonic()))
            except LedgerFlushTimeout:
                flushed = False  # the rows stay queued; the ledger spills them at exit
        self.report = DrainReport(
            finished=at_start - abandoned,
            abandoned=abandoned,
            released=released,
            ledger_flushed=flushed,
            waited_s=time.monotonic() - started,
        )
        diagnostics.count(
            "shutdown_drained",
            "graphthrift: drained (%d finished, %d abandoned, %d reservations released)",
            self.report.finished,
            abandoned,
            released,
        )
        return self.report

    def install(self, signals: Sequence[int] = (signal.SIGTERM,)) -> None:
        """Drain on these signals (main thread only), then call ``on_drained``."""
        for signum in signals:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> Any:
        report = self.drain()
        if self.on_drained is not None:
            self.on_drained(report)
            return
        raise SystemExit(0)
