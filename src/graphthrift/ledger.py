"""The cost ledger: every LLM call and every saving, as rows in PostgreSQL.

``Ledger.record`` only appends to an in-memory queue, so it costs the user's call a few
microseconds; a background thread prices the records and writes them in batches with
``COPY``. ``flush()`` returns once everything recorded before it is committed. If the
database is down, records stay queued and are retried; at exit, whatever could not be
written is spilled to ``<store home>/spill`` and replayed by the next ``Ledger`` opened
there. Nothing recorded is dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import json
import logging
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
from graphthrift._schema import LEDGER_TABLE, ledger_table
from graphthrift.errors import GraphthriftError
from graphthrift.prices import PriceBook, default_price_book
from graphthrift.records import RECORD_COLUMNS, TAG_FIELDS, LedgerRecord
from graphthrift.store import Store

logger = logging.getLogger("graphthrift.ledger")

REPORT_KEYS: tuple[str, ...] = (*TAG_FIELDS, "day", "kind", "layer")
_FILTERABLE = frozenset(RECORD_COLUMNS) - {"extra"}
_COPY_SQL = f"COPY {LEDGER_TABLE} ({', '.join(RECORD_COLUMNS)}) FROM STDIN"
_JSON_FIELDS = {f.name for f in fields(LedgerRecord) if f.name == "extra"}


class LedgerFlushTimeout(GraphthriftError):
    """``flush`` could not make the queued records durable in time (the database is down)."""

    def __init__(self, pending: int, timeout: float, last_error: str | None) -> None:
        self.pending = pending
        self.timeout = timeout
        self.last_error = last_error
        super().__init__(
            f"{pending} ledger records are not yet written after {timeout:.1f}s"
            f" (last error: {last_error or 'none'}); they stay queued and will be retried"
        )


class Ledger:
    """Cost records for every LLM call and saving, batched off the hot path.

    Args:
        store: the shared ``Store``.
        prices: the ``PriceBook`` that prices records arriving without ``cost_usd``.
        batch_size: records per ``COPY``.
        flush_interval: seconds the writer waits before writing a partial batch.
        retry_interval: seconds between attempts while the database is unreachable.

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
    ) -> None:
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
        self._queue: deque[LedgerRecord | Callable[[], LedgerRecord | None]] = deque()
        self._cond = threading.Condition()
        self._enqueued = 0
        self._written = 0
        self._failures = 0
        self._last_error: str | None = None
        self._closed = False
        self._spilled_files: list[tuple[Path, int]] = []
        self._listeners: list[Callable[[Sequence[LedgerRecord]], None]] = []
        self._load_spill()
        self._thread = threading.Thread(target=self._run, name="graphthrift-ledger", daemon=True)
        self._thread.start()
        # Registered after the store started its server, so it runs before the server stops.
        self._atexit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit_hook)

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
            if len(self._queue) >= self.batch_size:
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
            if len(self._queue) >= self.batch_size:
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
        self._spill()
        atexit.unregister(self._atexit_hook)

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
            if not batch:
                continue
            batch = _materialise(batch)
            try:
                self._write(batch)
            except Exception as exc:
                with self._cond:
                    self._queue.extendleft(reversed(batch))
                    self._failures += 1
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
                if closed:
                    return
                time.sleep(self.retry_interval)
                continue
            # Listeners run before flush() can return, so "flushed" also means "observed".
            self._notify([r for r in batch if isinstance(r, LedgerRecord)])
            with self._cond:
                self._written += len(batch)
                self._cond.notify_all()
            self._forget_replayed_spills()

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
        batch = [r for r in batch if isinstance(r, LedgerRecord)]
        if not batch:
            return
        for record in batch:
            self._price(record)
        with self.store.raw_connection() as conn:
            try:
                with conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
                    for record in batch:
                        copy.write_row(_row(record))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    # -- spill: what could not be written survives the process ------------------------------

    def _spill(self) -> None:
        with self._cond:
            leftover = [r for r in _materialise(list(self._queue)) if isinstance(r, LedgerRecord)]
            self._queue.clear()
        if not leftover:
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"ledger-{int(time.time() * 1e6)}-{threading.get_native_id()}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for record in leftover:
                fh.write(json.dumps(_jsonable(record)) + "\n")
        diagnostics.count(
            "ledger_spilled",
            "graphthrift: %d ledger records could not be written; kept in %s",
            len(leftover),
            path,
        )

    def _load_spill(self) -> None:
        if not self.spill_dir.is_dir():
            return
        for path in sorted(self.spill_dir.glob("ledger-*.jsonl")):
            claimed = path.with_suffix(".replaying")
            try:
                path.rename(claimed)  # one ledger per file, even across processes
            except OSError:
                continue
            records = [
                _from_jsonable(json.loads(line))
                for line in claimed.read_text(encoding="utf-8").splitlines()
                if line
            ]
            self._queue.extend(records)
            self._enqueued += len(records)
            self._spilled_files.append((claimed, self._enqueued))
            logger.info(
                "graphthrift: replaying %d spilled ledger records from %s", len(records), path
            )

    def _forget_replayed_spills(self) -> None:
        with self._cond:
            done = [p for p, target in self._spilled_files if self._written >= target]
            self._spilled_files = [(p, t) for p, t in self._spilled_files if self._written < t]
        for path in done:
            path.unlink(missing_ok=True)

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
    row["ts"] = record.ts.isoformat()
    return row


def _from_jsonable(row: dict[str, Any]) -> LedgerRecord:
    row = dict(row)
    row["ts"] = datetime.fromisoformat(row["ts"])
    known = {f.name for f in fields(LedgerRecord)}
    return LedgerRecord(**{k: v for k, v in row.items() if k in known})


def _close_at_exit(ref: weakref.ReferenceType[Ledger]) -> None:
    """Flush a ledger at interpreter exit; spill what the database refuses."""
    ledger = ref()
    if ledger is None:
        return
    try:
        ledger.close(timeout=5.0)
    except Exception:  # pragma: no cover - the exit path must not raise
        logger.exception("graphthrift: closing a ledger at exit failed")
