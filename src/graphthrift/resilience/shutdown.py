"""Graceful restart: on SIGTERM, drain, flush the ledger, release what is still reserved.

A deploy that kills workers mid-call drops the user's request, loses ledger rows still queued
in memory and strands budget reservations until they expire. ``GracefulShutdown`` makes the
restart clean: once draining, it refuses new work (``ShuttingDown``), lets the calls in flight
finish within ``grace_s``, releases the budget reservations of calls that did not, and flushes
the ledger. On ``kill -9`` nothing runs: what the ledger already flushed stays, and the budget's
reservations expire (``reservation_ttl``) and are reclaimed by the next ``Budget.reclaim``.

Work that cannot finish in time is checkpointed, not dropped: a unit started with a key
(``work(key=..., thread_id=..., payload=...)``) is recorded in the store while it runs
(``InFlightLog``); when the grace period ends with it still running it is marked
``interrupted`` and booked in the ledger before the process exits, and after a ``kill -9`` the
next process finds it by its dead owner. ``interrupted()`` lists such units and
``resume_interrupted(fn)`` hands each to exactly one process (a LangGraph run continues from
its checkpointer: ``graphthrift.langgraph.resume_interrupted(graph, shutdown)``).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from graphthrift import diagnostics
from graphthrift.budget.budget import Budget, Reservation
from graphthrift.errors import ShuttingDown
from graphthrift.ledger.ledger import Ledger, LedgerFlushTimeout
from graphthrift.resilience.inflight import InFlightLog, InFlightUnit, ResumeReport
from graphthrift.store.postgres import Store

__all__ = ["DrainReport", "GracefulShutdown"]

#: The most a drain waits, past the grace period, for units whose rows are being written.
_RECORDING_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a drain did: calls that finished in time and that did not, reservations
    released, and whether the ledger was flushed."""

    finished: int
    abandoned: int
    released: int
    ledger_flushed: bool
    waited_s: float
    #: recorded units (``work(key=...)``) still running at the end, marked interrupted
    interrupted: int = 0


class GracefulShutdown:
    """Stop taking work, finish what is in flight, flush the ledger, release reservations.

    Args:
        ledger: the ``Ledger`` to flush.
        budget: the ``Budget`` whose reservations still open when the grace period ends
            (its calls still running, ``BudgetMiddleware``'s included, and those passed to
            ``hold``) are released, so a stopped call strands none of them.
        grace_s: seconds the calls in flight get to finish.
        on_drained: called after a signal-driven drain (default: ``SystemExit(0)`` in the
            main thread, so ``atexit`` hooks run and the process exits cleanly).
        store: where units started with a key are recorded (default: the ledger's store).
        lease_s: seconds a recorded unit's owner is trusted without a sign of life (see
            ``InFlightLog``); a heartbeat renews it while the process runs.

    Example:
        >>> shutdown = GracefulShutdown(ledger=ledger, budget=budget, grace_s=20)
        >>> shutdown.install()                   # SIGTERM drains, then exits
        >>> with shutdown.work():                # raises ShuttingDown while draining
        ...     answer = agent.invoke(...)
        >>> with shutdown.work(thread_id="t-42"):  # recorded: interrupted if not done in time
        ...     graph.invoke(inputs, {"configurable": {"thread_id": "t-42"}})
        >>> shutdown.resume_interrupted(lambda unit: rerun(unit.payload))  # next process
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None = None,
        budget: Budget | None = None,
        grace_s: float = 30.0,
        on_drained: Callable[[DrainReport], None] | None = None,
        store: Store | None = None,
        lease_s: float = 300.0,
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
        self._store = store if store is not None else (ledger.store if ledger else None)
        self._lease_s = lease_s
        self._log: InFlightLog | None = None
        self._units: dict[str, InFlightUnit] = {}
        self._recording = 0  # units whose row is being written
        self._interrupted: set[str] = set()
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0 seconds, got {lease_s!r}")

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

    @property
    def inflight(self) -> InFlightLog:
        """The store's record of units in flight (needs a ``store`` or a ``ledger``)."""
        if self._log is None:
            if self._store is None:
                raise ValueError(
                    "recording units in flight needs a store: pass GracefulShutdown(store=...)"
                    " or a ledger"
                )
            self._log = InFlightLog(self._store, ledger=self.ledger, lease_s=self._lease_s)
        return self._log

    @contextmanager
    def work(
        self,
        key: str | None = None,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        checkpoint_ns: str | None = None,
        payload: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Iterator[InFlightUnit | None]:
        """Run one unit of work, or raise ``ShuttingDown`` if the process is draining.

        With a ``key`` (or a LangGraph ``thread_id``, the key by default) the unit is recorded
        in the store while it runs and yielded; a drain that runs out of time marks it
        interrupted. ``payload`` (JSON) is what a restarted process needs to start it again.
        Without either nothing is recorded (no database round trip) and None is yielded.
        """
        self._enter()
        unit: InFlightUnit | None = None
        outcome: BaseException | None = None
        try:
            name = key if key is not None else thread_id
            if name is not None:
                unit = self._start_unit(
                    name, thread_id, run_id, tenant_id, checkpoint_ns, payload, tags
                )
            yield unit
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            if unit is not None:
                self._close_unit(unit, outcome)
            self._leave()

    @asynccontextmanager
    async def awork(
        self,
        key: str | None = None,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        checkpoint_ns: str | None = None,
        payload: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[InFlightUnit | None]:
        """``work`` for coroutines (the store calls run in a worker thread). A task cancelled
        inside it (how an asyncio server stops its requests) leaves the unit interrupted."""
        self._enter()
        unit: InFlightUnit | None = None
        outcome: BaseException | None = None
        try:
            name = key if key is not None else thread_id
            if name is not None:
                unit = await asyncio.to_thread(
                    self._start_unit,
                    name,
                    thread_id,
                    run_id,
                    tenant_id,
                    checkpoint_ns,
                    payload,
                    tags,
                )
            yield unit
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            if unit is not None:
                await asyncio.shield(asyncio.to_thread(self._close_unit, unit, outcome))
            self._leave()

    def _enter(self) -> None:
        with self._cond:
            if self._draining:
                diagnostics.count("shutdown_refused")
                raise ShuttingDown(self._in_flight, self.grace_s)
            self._in_flight += 1
            self._started += 1

    def _leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _start_unit(
        self,
        name: str,
        thread_id: str | None,
        run_id: str | None,
        tenant_id: str | None,
        checkpoint_ns: str | None,
        payload: Any,
        tags: Mapping[str, Any] | None,
    ) -> InFlightUnit | None:
        # a drain that begins while the row is being written waits for it (``_recording``),
        # so a unit that has just started is marked interrupted like any other
        with self._cond:
            self._recording += 1
        unit: InFlightUnit | None = None
        try:
            unit = self.inflight.start(
                name,
                tenant_id=tenant_id,
                thread_id=thread_id,
                run_id=run_id,
                checkpoint_ns=checkpoint_ns,
                payload=payload,
                tags=tags,
            )
        finally:
            with self._cond:
                self._recording -= 1
                if unit is not None:
                    self._units[unit.unit_id] = unit
                self._cond.notify_all()
        return unit

    def _close_unit(self, unit: InFlightUnit, outcome: BaseException | None) -> None:
        """Done if it finished (or failed on its own); interrupted if the process is being
        stopped under it (``SystemExit``, ``KeyboardInterrupt``) or a drain gave up on it
        and it did not finish after all."""
        with self._cond:
            self._units.pop(unit.unit_id, None)
            given_up = unit.unit_id in self._interrupted
            self._interrupted.discard(unit.unit_id)
        log = self.inflight
        if outcome is None:
            log.finish(unit)  # finished, even if after the drain gave up on it
        elif not isinstance(outcome, Exception):
            if not given_up:
                log.interrupt([unit], f"stopped by {type(outcome).__name__}")
        elif not given_up:
            log.finish(unit)  # failed on its own: the caller handles the error

    def hold(self, reservation: Reservation) -> None:
        """Track a budget reservation until ``drop``, so a drain can release it."""
        with self._cond:
            self._held[reservation.id] = reservation

    def drop(self, reservation: Reservation) -> None:
        """The reservation was settled or released by its call."""
        with self._cond:
            self._held.pop(reservation.id, None)

    def drain(self) -> DrainReport:
        """Refuse new work, wait for the calls in flight (up to ``grace_s``), mark the
        recorded units still running interrupted (and book them), release the reservations
        still held, flush the ledger."""
        started = time.monotonic()
        deadline = started + self.grace_s
        with self._cond:
            self._draining = True
            at_start = self._in_flight
            while self._in_flight > 0 and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            # units whose rows are still being written: wait for them (a store call, bounded
            # by its own deadline, and by _RECORDING_WAIT_S here) so they can be marked
            recorded_by = time.monotonic() + _RECORDING_WAIT_S
            while self._recording > 0 and time.monotonic() < recorded_by:
                self._cond.wait(0.05)
            abandoned = self._in_flight
            held = list(self._held.values())
            self._held.clear()
            stuck = list(self._units.values())
            self._interrupted.update(self._units)
        marked: list[InFlightUnit] = []
        if stuck:
            marked = self.inflight.interrupt(
                stuck, f"grace period of {self.grace_s:g}s ended with the unit still running"
            )
        released = 0
        if self.budget is not None:
            # every call still running holds one, whether or not it was ``hold``-ed
            known = {r.id for r in held}
            held += [r for r in self.budget.open_reservations() if r.id not in known]
            for reservation in held:
                released += self.budget.release_for_drain(reservation)
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
            interrupted=len(marked),
        )
        diagnostics.count(
            "shutdown_drained",
            "graphthrift: drained (%d finished, %d abandoned, %d interrupted units recorded,"
            " %d reservations released)",
            self.report.finished,
            abandoned,
            len(marked),
            released,
        )
        return self.report

    # -- after a restart ------------------------------------------------------------------

    def interrupted(self, *, tenant_id: str | None = None, limit: int = 100) -> list[InFlightUnit]:
        """Units a drain gave up on, or whose process died (``kill -9``), not yet resumed."""
        return self.inflight.interrupted(tenant_id=tenant_id, limit=limit)

    def claim(self, unit: InFlightUnit | str) -> InFlightUnit | None:
        """Take an interrupted unit for this process; None if another process took it."""
        return self.inflight.claim(unit)

    def finish(self, unit: InFlightUnit) -> None:
        """A claimed unit was resumed to its end."""
        self.inflight.finish(unit)

    def resume_interrupted(
        self,
        fn: Callable[[InFlightUnit], Any],
        *,
        tenant_id: str | None = None,
        where: Callable[[InFlightUnit], bool] | None = None,
        limit: int = 100,
    ) -> ResumeReport:
        """Claim each interrupted unit and run ``fn(unit)`` on it, once across processes.

        Each resume counts as work in flight: a drain waits for it, and marks it interrupted
        again if it does not finish in time; a unit whose ``fn`` raises is interrupted again
        (reason: the error), for a later try."""
        with self._cond:
            if self._draining:
                diagnostics.count("shutdown_refused")
                raise ShuttingDown(self._in_flight, self.grace_s)
        return self.inflight.resume(
            lambda unit: self._run_resumed(unit, fn),
            tenant_id=tenant_id,
            where=where,
            limit=limit,
            stop=lambda: self.draining,
        )

    async def aresume_interrupted(
        self,
        fn: Callable[[InFlightUnit], Awaitable[Any]],
        *,
        tenant_id: str | None = None,
        where: Callable[[InFlightUnit], bool] | None = None,
        limit: int = 100,
    ) -> ResumeReport:
        """``resume_interrupted`` for coroutines, one unit after another."""
        with self._cond:
            if self._draining:
                diagnostics.count("shutdown_refused")
                raise ShuttingDown(self._in_flight, self.grace_s)

        async def run(unit: InFlightUnit) -> Any:
            self._resuming(unit)
            try:
                return await fn(unit)
            finally:
                self._resumed(unit)

        return await self.inflight.aresume(
            run, tenant_id=tenant_id, where=where, limit=limit, stop=lambda: self.draining
        )

    def _run_resumed(self, unit: InFlightUnit, fn: Callable[[InFlightUnit], Any]) -> Any:
        self._resuming(unit)
        try:
            return fn(unit)
        finally:
            self._resumed(unit)

    def _resuming(self, unit: InFlightUnit) -> None:
        with self._cond:
            if self._draining:
                diagnostics.count("shutdown_refused")
                raise ShuttingDown(self._in_flight, self.grace_s)
            self._in_flight += 1
            self._started += 1
            self._units[unit.unit_id] = unit

    def _resumed(self, unit: InFlightUnit) -> None:
        with self._cond:
            self._units.pop(unit.unit_id, None)
            self._interrupted.discard(unit.unit_id)
            self._in_flight -= 1
            self._cond.notify_all()

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
