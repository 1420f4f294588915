"""The cost ledger: every LLM call and every saving, as rows in PostgreSQL.

``Ledger.record`` only appends to an in-memory queue, so it costs the user's call a few
microseconds; a background thread prices the records and writes them in batches with
``COPY``. ``flush()`` returns once everything recorded before it is committed. If the
database is down, records stay queued and are retried; at exit, whatever could not be
written is spilled to ``<store home>/spill`` and replayed by the next ``Ledger`` opened
there. Nothing recorded is dropped.

What keeps one bad record or one crash from losing the others:

- text that PostgreSQL refuses (NUL bytes, lone surrogates) and ``extra`` values JSON cannot
  hold are repaired and counted before a record is written or spilled;
- a batch the database still refuses is split in halves until the refused record is alone;
  that record goes to ``<spill dir>/quarantine`` with the error, and the rest are written;
- the queue is capped in bytes (``max_queue_bytes``, checked after each write attempt);
  beyond it records go to a spill file, which this ledger reads back once the database
  accepts writes again;
- a spill file being replayed is locked (``flock``), so one left by a crash is claimed by
  the next ledger, and a torn or unreadable line is quarantined instead of failing the rest;
- SIGTERM and SIGINT flush and spill every ledger before the previous handler runs.
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
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Date as SADate
from sqlalchemy import and_, case, cast, func, literal_column, select

from graphthrift import diagnostics
from graphthrift.errors import LedgerFlushTimeout as LedgerFlushTimeout
from graphthrift.errors import StoreUnavailable
from graphthrift.ledger.prices import PriceBook, default_price_book
from graphthrift.ledger.records import RECORD_COLUMNS, TAG_FIELDS, LedgerRecord
from graphthrift.ledger.schema import LEDGER_TABLE, ledger_table
from graphthrift.store.postgres import Store

logger = logging.getLogger("graphthrift.ledger")

REPORT_KEYS: tuple[str, ...] = (*TAG_FIELDS, "day", "kind", "layer")
_FILTERABLE = frozenset(RECORD_COLUMNS) - {"extra"}
_COPY_SQL = f"COPY {LEDGER_TABLE} ({', '.join(RECORD_COLUMNS)}) FROM STDIN"
_JSON_FIELDS = {f.name for f in fields(LedgerRecord) if f.name == "extra"}
_RECORD_OVERHEAD = 400  # bytes a queued LedgerRecord costs beyond its text (measured ~350)
_DEFERRED_SIZE = 1024  # a deferred builder's closure: its size is unknown until it runs


class Ledger:
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
    ) -> None:
        if max_queue_bytes < 1:
            raise ValueError(f"max_queue_bytes must be >= 1, got {max_queue_bytes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        self.store = store
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
        self._cond = threading.Condition()
        self._enqueued = 0
        self._written = 0
        self._failures = 0
        self._last_error: str | None = None
        self._closed = False
        self._failing = False  # the last write attempt failed for an outage
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

    # -- writing -------------------------------------------------------------------------

    def record(self, record: LedgerRecord) -> None:
        """Queue one record; never blocks on the database and never raises for it."""
        if not isinstance(record, LedgerRecord):
            raise TypeError(f"Ledger.record expects a LedgerRecord, got {type(record).__name__}")
        with self._cond:
            if self._closed:
                raise RuntimeError("this Ledger is closed")
            self._queue.append(record)
            self._enqueued += 1
            self._queued_bytes += _size(record)
            if len(self._queue) >= self.batch_size or self._queued_bytes > self.max_queue_bytes:
                self._cond.notify_all()

    def record_deferred(self, build: Callable[[], LedgerRecord | None]) -> None:
        """Queue a record that the writer thread builds, keeping that work off the call path.

        ``build`` runs once on the writer thread; if it raises, the failure is counted and
        logged and the other records of the batch are written.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("this Ledger is closed")
            self._queue.append(build)
            self._enqueued += 1
            self._queued_bytes += _size(build)
            if len(self._queue) >= self.batch_size or self._queued_bytes > self.max_queue_bytes:
                self._cond.notify_all()

    def record_many(self, records: Iterable[LedgerRecord]) -> None:
        """Queue several records at once."""
        batch = list(records)
        for record in batch:
            if not isinstance(record, LedgerRecord):
                raise TypeError(
                    f"Ledger.record_many expects LedgerRecords, got {type(record).__name__}"
                )
        with self._cond:
            if self._closed:
                raise RuntimeError("this Ledger is closed")
            self._queue.extend(batch)
            self._enqueued += len(batch)
            self._queued_bytes += sum(_size(r) for r in batch)
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

    def _quarantine(self, records: Sequence[LedgerRecord], exc: BaseException | str) -> None:
        """Keep refused records on disk with the reason, counted; they never block the rest."""
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".strip()
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        path = self.quarantine_dir / f"ledger-{time.time_ns()}-{threading.get_native_id()}.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            for record in records:
                error = reason.splitlines()[0] if reason else ""
                content: Any
                try:
                    content = _jsonable(record)
                except Exception as dump_exc:  # pragma: no cover - _jsonable repairs values
                    content = repr(record)
                    error += f"; not serialisable: {dump_exc!r}"
                line = {"error": error, "record": content}
                fh.write(json.dumps(line, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        diagnostics.count(
            "ledger_quarantined",
            "graphthrift: the database refused %d ledger record(s) (%s); kept in %s",
            len(records),
            reason.splitlines()[0] if reason else "",
            path,
        )

    def _quarantine_lines(self, lines: Sequence[str], source: Path, why: str) -> None:
        """Keep unreadable spill lines verbatim, so nothing on disk is silently dropped."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        path = self.quarantine_dir / f"{source.stem}-unreadable-{time.time_ns()}.txt"
        with path.open("w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.writelines(line + "\n" for line in lines)
        diagnostics.count(
            "ledger_spill_bad_line",
            "graphthrift: %d unreadable line(s) in spill file %s (%s); kept in %s",
            len(lines),
            source,
            why,
            path,
        )

    # -- spill: what could not be written survives the process ------------------------------

    def _spill(self, *, include_inflight: bool = False, keep: bool = False) -> None:
        """Move the queue (and the batch being written, if asked) to disk, then drop claims.

        Claimed replay files are released only after their unwritten records are safe in
        the new spill file, so a crash in between may duplicate rows but never loses one.
        With ``keep`` (the ledger stays open), the new files stay locked by this ledger and
        are read back once the database accepts writes; otherwise they are left for the
        next ledger.
        """
        with self._cond:
            leftover = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            inflight = self._inflight_batch if include_inflight else None
            if inflight is not None:
                self._inflight_batch = None  # the writer must not requeue it now
        built = _materialise(leftover)
        records = [r for r in built if isinstance(r, LedgerRecord)]
        if keep:
            with self._cond:
                self._written += len(built) - len(records)  # builders that produced nothing
        if records:
            path, fd = self._write_spill(records, locked=keep)
            if keep:
                with self._cond:
                    self._overflow[path] = fd
        if inflight is not None:
            kept = [r for r in _materialise(inflight) if isinstance(r, LedgerRecord)]
            if kept:
                path, fd = self._write_spill(kept, locked=keep)
                if keep:
                    with self._cond:
                        self._overflow[path] = fd
                        self._inflight_spill = path
            diagnostics.count(
                "ledger_spilled_inflight",
                "graphthrift: a ledger write was still running; its %d records were spilled"
                " too (if that write commits, they may be written twice)",
                len(kept),
            )
        with self._cond:
            claims = list(self._claims.items())
            self._claims.clear()
            overflow = [] if keep else list(self._overflow.items())
            if not keep:
                self._overflow.clear()
        for path, (fd, _) in claims:
            path.unlink(missing_ok=True)
            os.close(fd)
        for _, fd in overflow:  # still on disk, unlocked: the next ledger replays them
            os.close(fd)

    def _write_spill(self, records: Sequence[LedgerRecord], *, locked: bool) -> tuple[Path, int]:
        """Write records durably to a new spill file; return its path and (locked) fd.

        Every line is written whole and fsynced before the file gets its final name, so a
        crash leaves either no file or a complete one. ``locked`` files are ``.replaying``
        files this ledger holds (its queue overflow); others are plain ``.jsonl``.
        """
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        stem = f"ledger-{time.time_ns()}-{os.getpid()}-{threading.get_native_id()}"
        tmp = self.spill_dir / f"{stem}.tmp"
        final = self.spill_dir / f"{stem}.{'replaying' if locked else 'jsonl'}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if locked:
                _try_lock(fd)
            lines = []
            for record in records:
                record.repair()
                lines.append(json.dumps(_jsonable(record), default=str) + "\n")
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        if not locked:
            os.close(fd)
            fd = -1
        diagnostics.count(
            "ledger_spilled",
            "graphthrift: %d ledger records could not be written yet; kept in %s",
            len(records),
            final,
        )
        return final, fd

    def _cap_queue(self) -> None:
        """Spill the newest records while the queue holds more than ``max_queue_bytes``."""
        with self._cond:
            if self._queued_bytes <= self.max_queue_bytes:
                return
            moved: list[Any] = []
            while self._queue and self._queued_bytes > self.max_queue_bytes // 2:
                item = self._queue.pop()
                self._queued_bytes -= _size(item)
                moved.append(item)
        moved.reverse()
        records = [r for r in _materialise(moved) if isinstance(r, LedgerRecord)]
        with self._cond:
            self._written += len(moved) - len(records)  # builders that produced nothing
        if not records:
            return
        path, fd = self._write_spill(records, locked=True)
        with self._cond:
            self._overflow[path] = fd

    def _reload_overflow(self) -> None:
        """Read back one overflow file once the queue has room and writes succeed again."""
        with self._cond:
            if not self._overflow or self._queued_bytes > self.max_queue_bytes // 4:
                return
            path = next(iter(self._overflow))
            fd = self._overflow.pop(path)
        records, bad = _read_spill(fd)
        if bad:
            self._quarantine_lines(bad, path, "unreadable line")
        with self._cond:
            # these records were counted in _enqueued when first recorded
            self._queue.extend(records)
            self._queued_bytes += sum(_size(r) for r in records)
            self._claims[path] = (fd, self._written + self._inflight_count() + len(self._queue))
            self._cond.notify_all()

    def _inflight_count(self) -> int:
        return len(self._inflight_batch) if self._inflight_batch is not None else 0

    def _load_spill(self) -> None:
        """Claim and queue every spill file no live ledger holds.

        A ``.jsonl`` file is renamed to ``.replaying`` and locked; a ``.replaying`` file whose
        lock is free was left by a ledger that crashed while replaying it, so it is claimed
        again. Unreadable lines (a torn last line, a poisoned record) are quarantined and the
        rest replayed.
        """
        if not self.spill_dir.is_dir():
            return
        candidates = sorted(self.spill_dir.glob("ledger-*.jsonl")) + sorted(
            self.spill_dir.glob("ledger-*.replaying")
        )
        for path in candidates:
            claimed = path.with_suffix(".replaying")
            if path.suffix == ".jsonl":
                try:
                    path.rename(claimed)  # one ledger per file, even across processes
                except OSError:
                    continue
            fd = _claim(claimed)
            if fd is None:
                continue
            records, bad = _read_spill(fd)
            if bad:
                self._quarantine_lines(bad, claimed, "torn or invalid line")
            self._queue.extend(records)
            self._enqueued += len(records)
            self._queued_bytes += sum(_size(r) for r in records)
            self._claims[claimed] = (fd, self._written + len(self._queue))
            logger.info(
                "graphthrift: replaying %d spilled ledger records from %s", len(records), path
            )

    def _forget_replayed_spills(self) -> None:
        with self._cond:
            done = [(p, fd) for p, (fd, target) in self._claims.items() if self._written >= target]
            for path, _ in done:
                del self._claims[path]
        for path, fd in done:
            path.unlink(missing_ok=True)
            os.close(fd)

    # -- reading -------------------------------------------------------------------------

    def records(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Committed records matching column filters (``tenant_id="acme"``, ``kind="llm"``)."""
        query = (
            select(ledger_table)
            .where(*_conditions(since, until, filters))
            .order_by(ledger_table.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.store.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def report(
        self,
        by: Sequence[str] = ("tenant_id",),
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Totals grouped by any of ``REPORT_KEYS``, most expensive first.

        Each row has the group keys and ``requests`` (LLM calls), ``input_tokens``,
        ``output_tokens``, ``cached_tokens``, ``reasoning_tokens``, ``cache_write_tokens``,
        ``cost_usd``, ``cache_savings_usd`` (what the provider's prompt cache saved),
        ``success_rate``, ``cache_hits``, ``saved_usd`` and ``saved_tokens``.
        """
        if isinstance(by, str):
            by = [k for k in by.split(",") if k]
        unknown = [k for k in by if k not in REPORT_KEYS]
        if unknown:
            raise ValueError(f"cannot report by {unknown}; choose from {', '.join(REPORT_KEYS)}")
        c = ledger_table.c
        groups = [
            cast(func.timezone(literal_column("'UTC'"), c.ts), SADate).label("day")
            if k == "day"
            else c[k].label(k)
            for k in by
        ]
        is_llm = c.kind == "llm"
        llm_int = case((is_llm, 1), else_=0)
        query = (
            select(
                *groups,
                func.sum(llm_int).label("requests"),
                func.sum(case((is_llm, c.input_tokens), else_=0)).label("input_tokens"),
                func.sum(case((is_llm, c.output_tokens), else_=0)).label("output_tokens"),
                func.sum(case((is_llm, c.cached_tokens), else_=0)).label("cached_tokens"),
                func.sum(case((is_llm, c.reasoning_tokens), else_=0)).label("reasoning_tokens"),
                func.sum(case((is_llm, c.cache_write_tokens), else_=0)).label("cache_write_tokens"),
                func.coalesce(func.sum(c.cache_savings_usd), 0.0).label("cache_savings_usd"),
                func.coalesce(func.sum(c.cost_usd), 0.0).label("cost_usd"),
                func.sum(case((and_(is_llm, c.cost_usd.is_(None)), 1), else_=0)).label("unpriced"),
                (
                    func.sum(case((and_(is_llm, c.success), 1), else_=0))
                    * 1.0
                    / func.nullif(func.sum(llm_int), 0)
                ).label("success_rate"),
                func.sum(case((c.kind == "cache_hit", 1), else_=0)).label("cache_hits"),
                func.coalesce(func.sum(c.saved_usd), 0.0).label("saved_usd"),
                func.sum(c.saved_tokens).label("saved_tokens"),
            )
            .where(*_conditions(since, until, filters))
            .group_by(*groups)
            .order_by(func.coalesce(func.sum(c.cost_usd), 0.0).desc(), *groups)
        )
        with self.store.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            for key in (
                "requests",
                "input_tokens",
                "output_tokens",
                "cached_tokens",
                "reasoning_tokens",
                "cache_write_tokens",
                "unpriced",
                "cache_hits",
                "saved_tokens",
            ):
                row[key] = int(row[key] or 0)
            if isinstance(row.get("day"), date):
                row["day"] = row["day"].isoformat()
            row["success_rate"] = (
                None if row["success_rate"] is None else float(row["success_rate"])
            )
        return rows

    async def arecords(self, **kwargs: Any) -> list[dict[str, Any]]:
        """``records`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.records(**kwargs))

    async def areport(
        self, by: Sequence[str] = ("tenant_id",), **kwargs: Any
    ) -> list[dict[str, Any]]:
        """``report`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.report(by, **kwargs))


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


def _materialise(batch: list[Any]) -> list[Any]:
    """Build deferred records in place; a builder that fails is counted and left out."""
    out: list[Any] = []
    for item in batch:
        if isinstance(item, LedgerRecord | _Skipped):
            out.append(item)
            continue
        try:
            record = item()
        except Exception as exc:
            diagnostics.count(
                "ledger_build_failure", "graphthrift: building a ledger record failed: %r", exc
            )
            out.append(_Skipped())
            continue
        out.append(record if isinstance(record, LedgerRecord) else _Skipped())
    return out


class _Skipped:
    """Placeholder for a deferred record that produced nothing: counted as handled."""


class LedgerObserver:
    """Base for what watches committed ledger batches: metrics, trace exporters.

    Subclasses implement ``observe(records)``; it runs on the ledger's writer thread after each
    committed batch, so the user's call never pays for it. ``attach`` is idempotent.
    """

    _ledgers: list[Ledger]

    def observe(self, records: Sequence[LedgerRecord]) -> None:
        raise NotImplementedError

    def _attached(self) -> list[Ledger]:
        if "_ledgers" not in self.__dict__:
            self._ledgers = []
        return self._ledgers

    def attach(self, ledger: Ledger) -> Self:
        """Start observing ``ledger``'s committed batches; returns ``self``."""
        attached = self._attached()
        if not any(existing is ledger for existing in attached):
            ledger.add_listener(self.observe)
            attached.append(ledger)
        return self

    def detach(self, ledger: Ledger | None = None) -> None:
        """Stop observing ``ledger`` (every attached ledger when None)."""
        attached = self._attached()
        targets = list(attached) if ledger is None else [ledger]
        for target in targets:
            target.remove_listener(self.observe)
        self._ledgers = [led for led in attached if not any(led is t for t in targets)]


def _conditions(
    since: datetime | None, until: datetime | None, filters: dict[str, Any]
) -> list[Any]:
    c = ledger_table.c
    conds: list[Any] = []
    for key, value in filters.items():
        if key not in _FILTERABLE:
            raise ValueError(
                f"cannot filter ledger records on {key!r}; columns are {', '.join(sorted(_FILTERABLE))}"
            )
        conds.append(c[key].is_(None) if value is None else c[key] == value)
    if since is not None:
        conds.append(c.ts >= _aware(since, "since"))
    if until is not None:
        conds.append(c.ts < _aware(until, "until"))
    return conds


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _row(record: LedgerRecord) -> tuple[Any, ...]:
    return tuple(
        json.dumps(getattr(record, name), default=str)
        if name in _JSON_FIELDS and getattr(record, name) is not None
        else getattr(record, name)
        for name in RECORD_COLUMNS
    )


def _jsonable(record: LedgerRecord) -> dict[str, Any]:
    row = record.as_row()
    row["ts"] = record.ts.isoformat() if isinstance(record.ts, datetime) else str(record.ts)
    return row


def _from_jsonable(row: dict[str, Any]) -> LedgerRecord:
    row = dict(row)
    row["ts"] = datetime.fromisoformat(row["ts"])
    known = {f.name for f in fields(LedgerRecord)}
    return LedgerRecord(**{k: v for k, v in row.items() if k in known})


def _size(item: Any) -> int:
    """Roughly the memory a queued item holds: its text and ``extra`` plus fixed overhead."""
    if not isinstance(item, LedgerRecord):
        return _DEFERRED_SIZE
    size = _RECORD_OVERHEAD
    for name in _TEXT_COLUMNS:
        value = getattr(item, name)
        if isinstance(value, str):
            size += len(value)
    if item.extra:
        size += len(repr(item.extra))
    return size


_TEXT_COLUMNS = tuple(
    f.name for f in fields(LedgerRecord) if f.type in ("str | None", "str") and f.name != "kind"
)


def _is_outage(exc: BaseException) -> bool:
    """Whether a failed write means "database unreachable" (retry) rather than "bad data"."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, StoreUnavailable | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc.orig, psycopg.OperationalError | psycopg.InterfaceError
        )
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.AdminShutdown):
        return True
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not isinstance(
        exc, psycopg.errors.DataError | psycopg.errors.IntegrityError
    )


def _try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting (always True without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rename alone claims a file
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _claim(path: Path) -> int | None:
    """Open and lock a ``.replaying`` file; None if a live ledger holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    if not _try_lock(fd):
        os.close(fd)
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not replayed and removed meanwhile
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _read_spill(fd: int) -> tuple[list[LedgerRecord], list[str]]:
    """The records of a spill file, and the lines that are not a valid record."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", errors="surrogateescape")
    records: list[LedgerRecord] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a spill line must be a JSON object, got {type(row).__name__}")
            records.append(_from_jsonable(row))
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("graphthrift: unreadable spill line (%s)", exc)
            bad.append(line)
    return records, bad


# -- signals: a stopped process (docker stop, Kubernetes) spills what it could not write ----

_live_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_previous_handlers: dict[int, Any] = {}
_SIGNAL_FLUSH_SECONDS = 2.0
_signalled = False  # once a stop signal was handled, exit hooks wait less for the database


def _install_signal_handlers() -> None:
    """Handle SIGTERM and SIGINT once per process, chaining to the handlers found.

    Python only lets the main thread install signal handlers, so a ledger first created in
    another thread installs none (and logs it); ``atexit`` still spills at a normal exit.
    A handler installed later by the application replaces ours; it should call
    ``Ledger.spill_now()`` itself, or chain to the handler it found, as ours does.
    """
    if _previous_handlers:
        return
    if threading.current_thread() is not threading.main_thread():
        logger.info(
            "graphthrift: ledger created outside the main thread; SIGTERM/SIGINT not handled"
        )
        return
    for signum in _SIGNALS:
        try:
            _previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_signal)
        except (ValueError, OSError) as exc:  # pragma: no cover - embedded interpreters
            logger.info("graphthrift: cannot handle signal %s (%s)", signum, exc)


def _on_signal(signum: int, frame: Any) -> None:
    """Flush and spill every open ledger, then do what the previous handler would have."""
    global _signalled
    _signalled = True
    for ledger in list(_live_ledgers):
        try:
            ledger.spill_now(_SIGNAL_FLUSH_SECONDS)
        except Exception:  # the signal must still reach the previous handler
            logger.exception("graphthrift: spilling a ledger on signal %s failed", signum)
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN (or None: a handler not set from Python): the signal is ignored, as before


def _close_at_exit(ref: weakref.ReferenceType[Ledger]) -> None:
    """Flush a ledger at interpreter exit; spill what the database refuses."""
    ledger = ref()
    if ledger is None:
        return
    try:
        ledger.close(timeout=1.0 if _signalled else 5.0)
    except Exception:  # pragma: no cover - the exit path must not raise
        logger.exception("graphthrift: closing a ledger at exit failed")
