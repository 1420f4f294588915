"""Monthly partitions of the ledger: the months ahead made ready, the months past retention
dropped whole (tag rollups stay; per-task rollups, which name runs, go with them).

Raw rows are what grows: 100,000 calls a day is 36M rows a year. Dropping a month's
partition frees its space at once, where ``DELETE`` would leave a bloated table to vacuum.
The hourly rollups (``graphthrift_ledger_hourly``) are kept, so ``report`` and ``alerts``
still answer for the dropped months by any rolled-up tag (not by thread or run id, which only
raw rows hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import text

from graphthrift.errors import ConfigError
from graphthrift.ledger.schema import ADD_MONTH_FUNCTION, DEFAULT_PARTITION, LEDGER_TABLE
from graphthrift.ledger.task_rollups import (
    TASK_COMPACTED_TABLE,
    TASK_OUTCOME_TABLE,
    TASK_ROLLUP_TABLE,
)
from graphthrift.store.postgres import Store

__all__ = ["PartitionReport", "check_retention", "maintain_partitions"]

_MAINTAIN_LOCK = 0x67745F70  # "gt_p": one maintainer at a time, for this transaction only


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """What one maintenance pass did: months made ready, months dropped, stray rows removed."""

    created: list[str]
    dropped: list[str]
    deleted_rows: int


def maintain_partitions(
    store: Store,
    *,
    retention_months: int | None = None,
    ahead_months: int = 2,
    now: datetime | None = None,
) -> PartitionReport:
    """Create the partitions of this month and ``ahead_months`` more; with
    ``retention_months``, drop the partitions of months that ended before the cutoff (the
    first day of the month ``retention_months`` before this one) and delete older rows from
    the default partition, and per-task rollups of those months. The tag rollups are never
    touched. Safe to run from any process at any
    time (a cron job, or ``Ledger(retention_months=...)`` on open)."""
    check_retention(retention_months)
    if isinstance(ahead_months, bool) or not isinstance(ahead_months, int) or ahead_months < 0:
        raise ConfigError("ahead_months", ahead_months, "a whole number of months >= 0")
    today = (now or datetime.now(UTC)).astimezone(UTC).date().replace(day=1)
    created: list[str] = []
    dropped: list[str] = []
    deleted = 0
    with store.connect() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MAINTAIN_LOCK})
        for n in range(ahead_months + 1):
            month = _add_months(today, n)
            if conn.execute(text(f"SELECT {ADD_MONTH_FUNCTION}(:m)"), {"m": month}).scalar():
                created.append(_name(month))
        if retention_months is not None:
            cutoff = _add_months(today, -retention_months)
            for (name,) in conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = CAST(:t AS regclass) ORDER BY 1"
                ),
                {"t": LEDGER_TABLE},
            ).all():
                of = _month_of(name)
                if of is not None and of < cutoff:
                    conn.execute(text(f'DROP TABLE "{name}"'))
                    dropped.append(name)
            start = datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC)
            deleted = conn.execute(
                text(f"DELETE FROM {DEFAULT_PARTITION} WHERE ts < :c"), {"c": start}
            ).rowcount
    if retention_months is not None:
        # per-task rollups name runs and threads, as raw rows do: they go with them, in a
        # transaction of their own, so writers wait for the partition drops only
        with store.connect() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MAINTAIN_LOCK})
            conn.execute(text(f"DELETE FROM {TASK_ROLLUP_TABLE} WHERE hour < :c"), {"c": start})
            conn.execute(text(f"DELETE FROM {TASK_OUTCOME_TABLE} WHERE ts < :c"), {"c": start})
            conn.execute(text(f"DELETE FROM {TASK_COMPACTED_TABLE} WHERE hour < :c"), {"c": start})
    return PartitionReport(created=created, dropped=dropped, deleted_rows=deleted)


def check_retention(retention_months: int | None) -> None:
    """Raise ``ConfigError`` unless ``retention_months`` is None or a whole number >= 1."""
    if retention_months is not None and (
        isinstance(retention_months, bool)
        or not isinstance(retention_months, int)
        or retention_months < 1
    ):
        raise ConfigError("retention_months", retention_months, "a whole number of months >= 1")


def _add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def _name(month: date) -> str:
    return f"{LEDGER_TABLE}_{month:%Y_%m}"


def _month_of(name: str) -> date | None:
    """The month of a partition named ``graphthrift_ledger_YYYY_MM`` (None for the default)."""
    tail = name.removeprefix(f"{LEDGER_TABLE}_")
    try:
        year, month = tail.split("_")
        return date(int(year), int(month), 1)
    except ValueError:
        return None
