"""Reading the ledger back: committed records by column filters, and grouped cost reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date as SADate
from sqlalchemy import case, cast, func, literal_column, select, text

from graphthrift.errors import UnknownReportKey
from graphthrift.ledger.records import RECORD_COLUMNS, TAG_FIELDS, TOKEN_FIELDS
from graphthrift.ledger.schema import (
    ROLLUP_TAGS,
    bounded_value,
    daily_table,
    ledger_table,
    rollup_table,
)
from graphthrift.store.postgres import Store

REPORT_KEYS: tuple[str, ...] = (*TAG_FIELDS, "day", "kind", "layer")
_FILTERABLE = frozenset(RECORD_COLUMNS) - {"extra"}

RAW_REPORT_MAX_ROWS = 250_000
"""A report that must read raw rows (by ``thread_id`` or ``run_id``, or filtered on a column
the rollups do not keep) and is given no ``since`` reads all of them only while the ledger
holds at most this many rows in its range (about 0.5 s here); beyond it, it reads the last
``RAW_REPORT_WINDOW`` and says so. Measured on 2M rows (100,000 a day): by thread_id over all
of them 3.0 s, over the last 24 hours 0.37 s; the 24 hours take the same time at 100M rows
(one month's partition, read through its ``ts`` index)."""

RAW_REPORT_WINDOW = timedelta(hours=24)
"""The range a raw-row report without ``since`` is bounded to over a large ledger."""

_log = logging.getLogger(__name__)

_SHOWN_BY_CALLER: ContextVar[bool] = ContextVar("graphthrift_bounds_shown_by_caller", default=False)


@contextmanager
def bounds_shown_by_caller() -> Iterator[None]:
    """Within it, a bounded range is returned but not logged: for a caller that shows
    ``ReportRange.bounded`` itself (the CLI prints it on its console), so its user reads the
    message once. Elsewhere the warning is how a Python caller learns its report was cut."""
    token = _SHOWN_BY_CALLER.set(True)
    try:
        yield
    finally:
        _SHOWN_BY_CALLER.reset(token)


@dataclass(frozen=True, slots=True)
class ReportRange:
    """The range a report read: ``since``/``until`` as asked, or bounded (``bounded`` then
    says why and how to read more)."""

    since: datetime | None
    until: datetime | None
    bounded: str | None = None


class ReportRows(list[dict[str, Any]]):
    """``report``'s rows (a plain list), with the range they cover in ``range``."""

    range: ReportRange

    def __init__(self, rows: list[dict[str, Any]], range_: ReportRange) -> None:
        super().__init__(rows)
        self.range = range_


def reads_raw_rows(by: Sequence[str], filters: dict[str, Any]) -> bool:
    """Whether a report must read raw rows whatever its range: a key or a filter that the
    rollups do not keep (``thread_id``, ``run_id``, ``success``...)."""
    return not (
        all(k in ROLLUP_TAGS or k == "day" for k in by) and all(k in ROLLUP_TAGS for k in filters)
    )


def bounded_range(
    conn: Any,
    what: str,
    since: datetime | None,
    until: datetime | None,
    *,
    max_raw_rows: int | None = RAW_REPORT_MAX_ROWS,
    now: datetime | None = None,
    reason: str = "reads raw ledger rows",
) -> ReportRange:
    """The range a raw-row read of ``what`` covers: as given when ``since`` is given or the
    ledger holds at most ``max_raw_rows`` rows before ``until`` (counted from the daily
    rollups, which keep months that retention dropped, so the count can only be high), else
    the last ``RAW_REPORT_WINDOW`` before ``until`` (or now), with a message saying so
    (``reason`` says why the read is bounded)."""
    if since is not None or max_raw_rows is None:
        return ReportRange(since, until)
    d = daily_table.c
    count = select(func.coalesce(func.sum(d.rows), 0))
    if until is not None:
        count = count.where(d.hour < _aware(until, "until"))
    held = int(conn.execute(count).scalar() or 0)
    if held <= max_raw_rows:
        return ReportRange(since, until)
    end = _aware(until, "until") if until is not None else (now or datetime.now(UTC))
    start = end - RAW_REPORT_WINDOW
    hours = RAW_REPORT_WINDOW.total_seconds() / 3600
    message = (
        f"{what} {reason} and the ledger holds {held:,} (more than"
        f" {max_raw_rows:,}), so it covers only the last {hours:g} hours:"
        f" {start.isoformat()} to {end.isoformat()}. Pass since= (--since) to choose the"
        " range."
    )
    if not _SHOWN_BY_CALLER.get():
        _log.warning(message)
    return ReportRange(start, until, message)


class LedgerQueries:
    """The read side of ``Ledger``: ``records``, ``report`` and their async twins."""

    store: Store

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
        max_raw_rows: int | None = RAW_REPORT_MAX_ROWS,
        **filters: Any,
    ) -> ReportRows:
        """Totals grouped by any of ``REPORT_KEYS``, most expensive first.

        Whole hours are read from the hourly rollups when every key and filter is a
        rolled-up tag, and hours cut by ``since``/``until`` from raw rows; a report by
        thread or run id, or filtered on other columns, reads raw rows only. Such a report
        without ``since`` over a ledger of more than ``max_raw_rows`` rows (``None``: no
        bound) covers only the last ``RAW_REPORT_WINDOW``: the returned list's ``range``
        says which range was read and, when bounded, why (it is also logged as a warning).
        Each row has the group keys and ``requests`` (LLM calls), ``records`` (ledger rows
        of every kind: routing decisions, cache hits, refusals, outcomes), ``input_tokens``,
        ``output_tokens``, ``cached_tokens``, ``reasoning_tokens``, ``cache_write_tokens``,
        ``cost_usd``, ``cache_savings_usd`` (what the provider's prompt cache saved),
        ``success_rate``, ``cache_hits``, ``saved_usd`` and ``saved_tokens``.
        """
        if isinstance(by, str):
            by = [k for k in by.split(",") if k]
        unknown = [k for k in by if k not in REPORT_KEYS]
        if unknown:
            raise UnknownReportKey("report by", unknown, REPORT_KEYS)
        _conditions(since, until, filters)  # bad filters and times fail before any read
        with self.store.connect() as conn:
            read = ReportRange(since, until)
            if reads_raw_rows(by, filters):
                read = bounded_range(
                    conn, f"report by {','.join(by)}", since, until, max_raw_rows=max_raw_rows
                )
                # a day of raw rows grouped by run id outgrows the default 4 MB and sorts on
                # disk; with room it hashes (this transaction only: poolers keep no state)
                conn.execute(text("SET LOCAL work_mem = '64MB'"))
            rows = _run_report(conn, list(by), read.since, read.until, filters)
        for row in rows:
            for key in (
                "requests",
                "records",
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
        return ReportRows(rows, read)

    async def arecords(self, **kwargs: Any) -> list[dict[str, Any]]:
        """``records`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.records(**kwargs))

    async def areport(self, by: Sequence[str] = ("tenant_id",), **kwargs: Any) -> ReportRows:
        """``report`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.report(by, **kwargs))


def rollups_answer(
    by: Sequence[str], since: datetime | None, until: datetime | None, filters: dict[str, Any]
) -> bool:
    """Whether the hourly rollups hold the answer: every group key and filter is a rolled-up
    tag (or ``day``) and the range starts and ends on whole hours."""
    return (
        all(k in ROLLUP_TAGS or k == "day" for k in by)
        and all(k in ROLLUP_TAGS for k in filters)
        and all(on_the_hour(t) for t in (since, until))
    )


def _run_report(
    conn: Any,
    by: list[str],
    since: datetime | None,
    until: datetime | None,
    filters: dict[str, Any],
) -> list[dict[str, Any]]:
    """Whole hours from the rollups, the cut hours at either end from raw rows."""
    if reads_raw_rows(by, filters):
        return _fetch(conn, _raw_report(by, since, until, filters))
    if all(_on_the_day(t) for t in (since, until)):
        return _fetch(conn, _rollup_report(by, since, until, filters, daily_table))
    if rollups_answer(by, since, until, filters):
        return _fetch(conn, _rollup_report(by, since, until, filters))
    lo = None if since is None else ceil_hour(_aware(since, "since"))
    hi = None if until is None else _floor_hour(_aware(until, "until"))
    if lo is not None and hi is not None and lo >= hi:  # under two hours: raw rows are few
        return _fetch(conn, _raw_report(by, since, until, filters))
    parts = [_fetch(conn, _rollup_report(by, lo, hi, filters))]
    if since is not None and lo != since:
        parts.append(_fetch(conn, _raw_report(by, since, lo, filters)))
    if until is not None and hi != until:
        parts.append(_fetch(conn, _raw_report(by, hi, until, filters)))
    return _merge(parts, by)


_SUMMED = (
    "requests",
    "records",
    *TOKEN_FIELDS,
    "unpriced",
    "cache_hits",
    "saved_tokens",
    "cost_usd",
    "cache_savings_usd",
    "saved_usd",
)


def _fetch(conn: Any, query: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(query)]


def _merge(parts: list[list[dict[str, Any]]], by: list[str]) -> list[dict[str, Any]]:
    """Add up report rows of the same group from several parts of the range."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for part in parts:
        for row in part:
            requests = int(row["requests"] or 0)
            rate = row["success_rate"]
            successes = 0 if rate is None else round(float(rate) * requests)
            into = merged.setdefault(
                tuple(row[k] for k in by),
                {**{k: row[k] for k in by}, **dict.fromkeys(_SUMMED, 0), "successes": 0},
            )
            for key in _SUMMED:
                value = row[key] or 0
                into[key] += float(value) if isinstance(into[key], float) else value
            into["successes"] += successes
    rows = list(merged.values())
    for row in rows:
        successes = row.pop("successes")
        row["success_rate"] = successes / row["requests"] if row["requests"] else None
        for key in ("cost_usd", "cache_savings_usd", "saved_usd"):
            row[key] = float(row[key])
    rows.sort(key=lambda r: (-r["cost_usd"], *((r[k] is None, r[k] or "") for k in by)))
    return rows


def ceil_hour(value: datetime) -> datetime:
    """``value`` if on the hour, else the next whole hour (UTC)."""
    floor = _floor_hour(value)
    return floor if floor == value else floor + timedelta(hours=1)


def _floor_hour(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _on_the_day(value: datetime | None) -> bool:
    if value is None:
        return True
    return on_the_hour(value) and _aware(value, "since/until").astimezone(UTC).hour == 0


def on_the_hour(value: datetime | None) -> bool:
    if value is None:
        return True
    value = _aware(value, "since/until").astimezone(UTC)
    return value.minute == 0 and value.second == 0 and value.microsecond == 0


def _raw_report(
    by: Sequence[str], since: datetime | None, until: datetime | None, filters: dict[str, Any]
) -> Any:
    """The report aggregated over raw ledger rows (each one a rollup of one row)."""
    c = ledger_table.c
    source = {
        **{name: c[name] for name in ("kind", "cost_usd", "cache_savings_usd", "saved_usd")},
        **{name: c[name] for name in (*TOKEN_FIELDS, "saved_tokens")},
        "rows": literal_column("1"),
        "unpriced": case((c.cost_usd.is_(None), 1), else_=0),
        "successes": case((c.success, 1), else_=0),
    }
    groups = [_group(c.ts, k) if k == "day" else c[k].label(k) for k in by]
    return _report_select(source, groups, _conditions(since, until, filters))


def _rollup_report(
    by: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    filters: dict[str, Any],
    table: Any = rollup_table,
) -> Any:
    """The same report summed over rollup rows: one row per hour (or day) and tag set."""
    r = table.c
    groups = [_group(r.hour, k) if k == "day" else r[k].label(k) for k in by]
    conds: list[Any] = [
        r[key].is_(None) if value is None else r[key] == bounded_value(value)
        for key, value in filters.items()
    ]
    if since is not None:
        conds.append(r.hour >= _aware(since, "since"))
    if until is not None:
        conds.append(r.hour < _aware(until, "until"))
    return _report_select({c.name: c for c in r}, groups, conds)


def _report_select(source: dict[str, Any], groups: list[Any], conds: list[Any]) -> Any:
    """The report's aggregates over rollup-shaped columns (``rows``, ``successes``...)."""
    is_llm = source["kind"] == "llm"
    llm_rows = func.sum(case((is_llm, source["rows"]), else_=0))
    cost = func.coalesce(func.sum(source["cost_usd"]), 0.0)
    return (
        select(
            *groups,
            llm_rows.label("requests"),
            func.sum(source["rows"]).label("records"),
            *(func.sum(case((is_llm, source[t]), else_=0)).label(t) for t in TOKEN_FIELDS),
            func.coalesce(func.sum(source["cache_savings_usd"]), 0.0).label("cache_savings_usd"),
            cost.label("cost_usd"),
            func.sum(case((is_llm, source["unpriced"]), else_=0)).label("unpriced"),
            (
                func.sum(case((is_llm, source["successes"]), else_=0))
                * 1.0
                / func.nullif(llm_rows, 0)
            ).label("success_rate"),
            func.sum(case((source["kind"] == "cache_hit", source["rows"]), else_=0)).label(
                "cache_hits"
            ),
            func.coalesce(func.sum(source["saved_usd"]), 0.0).label("saved_usd"),
            func.sum(source["saved_tokens"]).label("saved_tokens"),
        )
        .where(*conds)
        .group_by(*groups)
        .order_by(cost.desc(), *groups)
    )


def _group(ts: Any, key: str) -> Any:
    return cast(func.timezone(literal_column("'UTC'"), ts), SADate).label(key)


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
