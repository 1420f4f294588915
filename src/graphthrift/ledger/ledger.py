"""The cost ledger: every LLM call and every saving, as rows in PostgreSQL.

``Ledger.record`` only appends to an in-memory queue, so it costs the user's call a few
microseconds; a background thread prices the records and writes them in batches with
``COPY``. ``flush()`` returns once everything recorded before it is committed. If the
database is down, records stay queued and are retried; at exit, whatever could not be
written is spilled to ``<store home>/spill`` and replayed by the next ``Ledger`` opened
there. Nothing recorded is dropped.

This module is the write queue and its writer thread. What keeps one bad record or one crash
from losing the others lives beside it: repairs in ``records``, spill files and quarantine in
``spill``, the byte-capped queue items in ``items``, SIGTERM/SIGINT and exit in ``signals``.
The read side (``records``, ``report``) is ``query``; observers (metrics, OTel) ``observer``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from graphthrift import diagnostics
from graphthrift.errors import LedgerFlushTimeout as LedgerFlushTimeout
from graphthrift.errors import StoreUnavailable
from graphthrift.ledger.items import _materialise, _size
from graphthrift.ledger.observer import LedgerObserver
from graphthrift.ledger.partitions import check_retention, maintain_partitions
from graphthrift.ledger.prices import PriceBook, default_price_book
from graphthrift.ledger.query import REPORT_KEYS, LedgerQueries
from graphthrift.ledger.records import RECORD_COLUMNS, LedgerRecord
from graphthrift.ledger.schema import LEDGER_TABLE
from graphthrift.ledger.signals import _close_at_exit, _install_signal_handlers, _live_ledgers
from graphthrift.ledger.spill import LedgerSpill
from graphthrift.ledger.task_compaction import HourlyMerger
from graphthrift.store.postgres import Store

__all__ = ["REPORT_KEYS", "Ledger", "LedgerFlushTimeout", "LedgerObserver"]

logger = logging.getLogger("graphthrift.ledger")

_COPY_SQL = f"COPY {LEDGER_TABLE} ({', '.join(RECORD_COLUMNS)}) FROM STDIN"
_JSON_FIELDS = {f.name for f in fields(LedgerRecord) if f.name == "extra"}


class Ledger(LedgerSpill, LedgerQueries):
    """Cost records for every LLM call and saving, batched off the hot path.

    Args:
        store: the shared ``Store``.
        prices: the ``PriceBook`` that prices records arriving without ``cost_usd``.
        batch_size: records per ``COPY``.
        flush_interval: seconds the writer waits before writing a partial batch.
        retry_interval: seconds between attempts while the database is unreachable.
        spill_dir: where unwritten records are kept on disk (default: under the store home).
        max_queue_bytes: memory the queue may hold (estimated); beyond it records are
            spilled to disk and read back when the database accepts writes again.
        retention_months: raw rows older than this many whole months are dropped (by
            month partition) when the ledger opens; hourly rollups are kept. ``None`` keeps
            every row. Opening also makes the partitions of the coming months ready (on
            the writer thread, before its first batch).

    Example:
        >>> ledger = Ledger(Store())
        >>> ledger.record(LedgerRecord(model="gpt-4o-mini", input_tokens=900, output_tokens=80))
        >>> ledger.flush()
        >>> ledger.report(by=["model"])
    """

    def __init__(
        self,
        store: Store,
        *,
        prices: PriceBook | None = None,
        batch_size: int = 2_000,
        flush_interval: float = 0.2,
        retry_interval: float = 1.0,
        spill_dir: str | Path | None = None,
        max_queue_bytes: int = 64 * 1024 * 1024,
        retention_months: int | None = None,
    ) -> None:
        if max_queue_bytes < 1:
            raise ValueError(f"max_queue_bytes must be >= 1, got {max_queue_bytes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        self.store = store
        check_retention(retention_months)
        self.retention_months = retention_months
        self.prices = prices or default_price_book()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        # Spilled rows belong to one database: keep them under a folder named for it.
        url_key = hashlib.sha1(store.display_url.encode()).hexdigest()[:12]
        self.spill_dir = (
            Path(spill_dir) if spill_dir is not None else store.home / "spill" / url_key
        )
        self.quarantine_dir = self.spill_dir / "quarantine"
        self.max_queue_bytes = max_queue_bytes
        self._queue: deque[LedgerRecord | Callable[[], LedgerRecord | None]] = deque()
        # the call path takes the lock bare (a Condition's ``with`` is one Python call more)
        self._queue_lock = threading.RLock()
        self._cond = threading.Condition(self._queue_lock)
        self._enqueued = 0
        self._written = 0
        self._failures = 0
        self._last_error: str | None = None
        self._closed = False
        self._failing = False  # the last write attempt failed for an outage
        self._merger = HourlyMerger(store)  # merges the task rollups of closed hours
        self._queued_bytes = 0
        self._inflight = 0
        self._overflow: dict[Path, int] = {}  # locked spill files of this ledger's overflow
        self._inflight_batch: list[Any] | None = None
        self._inflight_spill: Path | None = None  # where spill_now put the batch in flight
        # claimed spill files: path -> (locked file descriptor, _written count that clears it)
        self._claims: dict[Path, tuple[int, int]] = {}
        self._listeners: list[Callable[[Sequence[LedgerRecord]], None]] = []
        self._load_spill()
        self._thread = threading.Thread(target=self._run, name="graphthrift-ledger", daemon=True)
        self._thread.start()
        # Registered after the store started its server, so it runs before the server stops.
        self._atexit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit_hook)
        _live_ledgers.add(self)
        _install_signal_handlers()

    def _maintain(self) -> None:
        """Partitions ahead and retention, first thing on the writer thread: opening a
        ledger never waits for the database, and a failure never stops the ledger."""
        try:
            maintain_partitions(self.store, retention_months=self.retention_months)
        except Exception as exc:
            diagnostics.count(
                "ledger_partition_failure",
                "graphthrift: ledger partition maintenance failed (%r); rows wait in the"
                " default partition",
                exc,
            )

    # -- writing -------------------------------------------------------------------------

    def record(self, record: LedgerRecord) -> None:
        """Queue one record; never blocks on the database and never raises for it."""
        if not isinstance(record, LedgerRecord):
            raise TypeError(f"Ledger.record expects a LedgerRecord, got {type(record).__name__}")
        self._enqueue((record,), _size(record))

    def record_deferred(self, build: Callable[[], LedgerRecord | None]) -> None:
        """Queue a record that the writer thread builds, keeping that work off the call path.

        ``build`` runs once on the writer thread; if it raises, the failure is counted and
        logged and the other records of the batch are written.
        """
        self._enqueue((build,), _size(build))

    def record_many(self, records: Iterable[LedgerRecord]) -> None:
        """Queue several records at once."""
        batch = list(records)
        for record in batch:
            if not isinstance(record, LedgerRecord):
                raise TypeError(
                    f"Ledger.record_many expects LedgerRecords, got {type(record).__name__}"
                )
        self._enqueue(batch, sum(_size(record) for record in batch), wake=True)

    def _enqueue(
        self,
        items: Sequence[LedgerRecord | Callable[[], LedgerRecord | None]],
        size: int,
        *,
        wake: bool = False,
    ) -> None:
        """Append ``items`` (``size``: their ``_size``, which the writer takes off when it pops
        them); wake the writer when asked, or when a batch or the byte cap is reached.

        Called for every LLM call: the bare lock, no generator under it."""
        with self._queue_lock:
            if self._closed:
                raise RuntimeError("this Ledger is closed")
            self._queue.extend(items)
            self._enqueued += len(items)
            self._queued_bytes += size
            if (
                wake
                or len(self._queue) >= self.batch_size
                or self._queued_bytes > self.max_queue_bytes
            ):
                self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every record queued before this call is committed.

        Raises:
            LedgerFlushTimeout: the database did not accept them within ``timeout`` seconds;
                the records stay queued and are retried.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            self._cond.notify_all()
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LedgerFlushTimeout(target - self._written, timeout, self._last_error)
                self._cond.wait(min(remaining, 0.05))
                self._cond.notify_all()

    async def aflush(self, timeout: float = 30.0) -> None:
        """``flush`` without blocking the event loop."""
        await asyncio.to_thread(self.flush, timeout)

    @property
    def pending(self) -> int:
        """Records queued but not yet committed."""
        with self._cond:
            return self._enqueued - self._written

    @property
    def stats(self) -> dict[str, Any]:
        """Counts for monitoring: written, pending, failed write attempts, last error."""
        with self._cond:
            return {
                "written": self._written,
                "pending": self._enqueued - self._written,
                "write_failures": self._failures,
                "last_error": self._last_error,
                "queued_bytes": self._queued_bytes,
                "overflow_files": len(self._overflow),
            }

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the writer, and spill to disk whatever could not be written."""
        if self._closed:
            return
        with contextlib.suppress(LedgerFlushTimeout):
            self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        self._spill(include_inflight=self._thread.is_alive())
        self._merger.join(timeout=max(1.0, timeout))
        atexit.unregister(self._atexit_hook)
        _live_ledgers.discard(self)

    def spill_now(self, timeout: float = 2.0) -> None:
        """Flush for up to ``timeout`` seconds, then move what is still queued to disk.

        The ledger stays open. This is what SIGTERM and SIGINT do before the previous
        handler runs: a process about to be stopped keeps its records in a spill file
        that the next ``Ledger`` on this store replays.
        """
        if self._closed:
            return
        if self._failing:  # the database is refusing writes: do not wait for it
            timeout = min(timeout, 0.1)
        with contextlib.suppress(LedgerFlushTimeout):
            self.flush(timeout)
        self._spill(include_inflight=True, keep=True)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        self._maintain()
        while True:
            with self._cond:
                if not self._queue and not self._closed:
                    self._cond.wait(self.flush_interval)
                if self._closed and not self._queue:
                    return
                if len(self._queue) < self.batch_size and not self._closed:
                    # let a partial batch fill up a little unless someone is flushing
                    self._cond.wait(self.flush_interval / 4)
                batch = [
                    self._queue.popleft() for _ in range(min(len(self._queue), self.batch_size))
                ]
                batch_bytes = sum(_size(r) for r in batch)
                self._queued_bytes -= batch_bytes
                self._inflight_batch = batch or None
            if not batch:
                continue
            batch = _materialise(batch)
            with self._cond:
                if self._inflight_batch is None:  # spill_now took it while it was built
                    continue
                self._inflight_batch = batch
            try:
                self._write(batch)
            except Exception as exc:
                with self._cond:
                    spilled = self._inflight_batch is None  # a signal spilled it meanwhile
                    self._inflight_batch = None
                    self._inflight_spill = None  # if spilled, that file is read back later
                    if not spilled:
                        self._queue.extendleft(reversed(batch))
                        self._queued_bytes += batch_bytes
                    self._failures += 1
                    self._failing = True
                    self._last_error = (
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    )
                    closed = self._closed
                diagnostics.count(
                    "ledger_write_failure",
                    "graphthrift: ledger write failed (%s); %d records kept queued",
                    self._last_error,
                    len(batch),
                )
                self._cap_queue()
                if closed:
                    return
                resume = time.monotonic() + self.retry_interval
                with self._cond:  # wake early for close() only: flushes notify every 50 ms
                    while not self._closed and (left := resume - time.monotonic()) > 0:
                        self._cond.wait(left)
                continue
            # Listeners run before flush() can return, so "flushed" also means "observed".
            self._notify([r for r in batch if isinstance(r, LedgerRecord)])
            with self._cond:
                if self._inflight_batch is None and self._inflight_spill is not None:
                    # spill_now saved this batch to disk meanwhile; it is written now
                    fd = self._overflow.pop(self._inflight_spill, None)
                    if fd is not None:
                        self._inflight_spill.unlink(missing_ok=True)
                        os.close(fd)
                    self._inflight_spill = None
                self._written += len(batch)
                self._inflight_batch = None
                self._failing = False
                self._cond.notify_all()
            self._forget_replayed_spills()
            self._cap_queue()
            self._reload_overflow()
            self._merger.poke()

    def add_listener(self, listener: Callable[[Sequence[LedgerRecord]], None]) -> None:
        """Call ``listener(records)`` on the writer thread after each committed batch.

        Metrics and trace exporters hang off this, so they see exactly what was recorded,
        priced, and never slow the user's call. A listener that raises is counted and logged.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Sequence[LedgerRecord]], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners = [fn for fn in self._listeners if fn != listener]  # bound methods: ==

    def _notify(self, records: Sequence[LedgerRecord]) -> None:
        for listener in self._listeners:
            try:
                listener(records)
            except Exception as exc:
                diagnostics.count(
                    "ledger_listener_failure", "graphthrift: a ledger listener failed: %r", exc
                )

    def _price(self, record: LedgerRecord) -> None:
        if not record.model:
            return
        if record.kind == "llm" and record.cost_usd is None:
            record.cost_usd, record.cache_savings_usd = _llm_cost(self.prices, record)
        elif record.kind == "cache_hit" and record.saved_usd is None:
            record.saved_usd = self.prices.cost(
                record.model, record.input_tokens, record.output_tokens, record.cached_tokens
            )
        elif record.kind != "llm" and record.saved_usd is None and record.saved_tokens:
            record.saved_usd = self.prices.cost(record.model, record.saved_tokens, 0)

    def _write(self, batch: Sequence[Any]) -> None:
        records = [r for r in batch if isinstance(r, LedgerRecord)]
        if not records:
            return
        for record in records:
            record.repair()  # it may have been changed since it was built
            self._price(record)
        try:
            self._copy(records)
        except Exception as exc:
            if _is_outage(exc):
                raise
            self._bisect(records, exc)

    def _copy(self, records: Sequence[LedgerRecord]) -> None:
        # the store's soft deadline: a stopped server fails the batch (kept, retried) within
        # seconds, while a busy one that is still taking the COPY is waited for
        with self.store.raw_connection() as conn:
            try:
                with conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
                    for record in records:
                        copy.write_row(_row(record))
                conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise

    def _bisect(self, records: Sequence[LedgerRecord], exc: Exception) -> None:
        """Write what the database accepts; quarantine each record it refuses, alone.

        Halving costs about 2 log2(n) extra COPYs per refused record, instead of one
        poisoned record blocking the queue behind it for good.
        """
        if len(records) == 1:
            self._quarantine(records, exc)
            return
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            try:
                self._copy(half)
            except Exception as half_exc:
                if _is_outage(half_exc):
                    raise
                self._bisect(half, half_exc)


def _llm_cost(prices: PriceBook, record: LedgerRecord) -> tuple[float | None, float | None]:
    """The call's cost with its cache reads and writes, and what prompt caching saved.

    ``extra`` may carry ``cache_write_1h_tokens`` (the 1-hour part of the cache writes) and
    ``batch`` (a Batch API call). The saving is the list price of the same call with no
    prompt cache minus the cost; it is negative for a call that only wrote the cache.
    """
    extra = record.extra or {}
    hour = extra.get("cache_write_1h_tokens")
    batch = extra.get("batch") is True
    cost = prices.cost(
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cached_tokens,
        cache_write_tokens=record.cache_write_tokens,
        cache_write_1h_tokens=hour if isinstance(hour, int) else 0,
        batch=batch,
    )
    if cost is None or not (record.cached_tokens or record.cache_write_tokens):
        return cost, None if cost is None else 0.0
    listed = prices.cost(record.model, record.input_tokens, record.output_tokens, batch=batch)
    return cost, None if listed is None else listed - cost


def _row(record: LedgerRecord) -> tuple[Any, ...]:
    return tuple(
        json.dumps(getattr(record, name), default=str)
        if name in _JSON_FIELDS and getattr(record, name) is not None
        else getattr(record, name)
        for name in RECORD_COLUMNS
    )


def _is_outage(exc: BaseException) -> bool:
    """Whether a failed write means "database unreachable" (retry) rather than "bad data"."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    # a record the server can never take (a value past a limit) is bad data, not an outage,
    # although PostgreSQL files "program limit exceeded" under its operational errors
    records_fault = (
        psycopg.errors.DataError
        | psycopg.errors.IntegrityError
        | psycopg.errors.ProgramLimitExceeded
    )
    if isinstance(exc, StoreUnavailable | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if isinstance(exc.orig, records_fault):
            return False
        return bool(exc.connection_invalidated) or isinstance(
            exc.orig, psycopg.OperationalError | psycopg.InterfaceError
        )
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.AdminShutdown):
        return True
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not isinstance(
        exc, records_fault
    )
