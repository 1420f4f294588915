"""Merging the per-task rollup rows of closed hours (ledger migration 8).

The ledger's trigger appends a task-rollup row per run, thread, hour and tag set of each
batch instead of upserting one: the upsert cost about a fifth of the ledger's write
throughput. A run whose calls land in several batches (the writer flushes every 0.2 s) then
has several rows in its hour. Reads sum rows per task, so the figures are the same either
way; merging only keeps what a report reads close to one row per key. Once an hour has
closed, the first writer to notice merges its rows, once: a marker row records it, and an
advisory lock keeps two processes from merging the same hour at the same time.

The merge is one statement that deletes the hour's rows and inserts their sums, so a batch
committed meanwhile is either merged or left beside the merged row, never lost or counted
twice. A row written into an hour after it was merged (a late batch from a spill) stays
beside the merged one; reads still sum it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from graphthrift import diagnostics
from graphthrift.errors import ConfigError
from graphthrift.ledger.task_rollups import (
    TASK_COMPACTED_TABLE,
    TASK_ROLLUP_TABLE,
    task_rollup_merge,
)
from graphthrift.store.postgres import Store

__all__ = ["COMPACT_HOURS", "HourlyMerger", "compact_task_rollups"]

#: How many closed hours back a writer looks for hours to merge.
COMPACT_HOURS = 24

_LOCK_CLASS = 0x67745F74  # "gt_t": with the hour's number, one merger per hour at a time

_MERGE = text(task_rollup_merge())
_PENDING = text(
    f"""
    SELECT h FROM generate_series(
        CAST(:start AS timestamptz), CAST(:last AS timestamptz), interval '1 hour') AS h
    WHERE NOT EXISTS (SELECT 1 FROM {TASK_COMPACTED_TABLE} c WHERE c.hour = h)
        AND EXISTS (SELECT 1 FROM {TASK_ROLLUP_TABLE} r WHERE r.hour = h)
    ORDER BY h
    """
)


def compact_task_rollups(
    store: Store, *, now: datetime | None = None, hours: int = COMPACT_HOURS
) -> int:
    """Merge the task rollups of each of the last ``hours`` closed hours before ``now`` that
    was not merged yet to one row per key; return how many rows that removed. An hour another
    process is merging is left to it."""
    if isinstance(hours, bool) or not isinstance(hours, int) or hours < 1:
        raise ConfigError("hours", hours, "a whole number of hours >= 1")
    end = (now or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    with store.connect() as conn:
        pending = [
            h
            for (h,) in conn.execute(
                _PENDING, {"start": end - timedelta(hours=hours), "last": end - timedelta(hours=1)}
            ).all()
        ]
    removed = 0
    for hour in pending:
        with store.connect() as conn:
            number = int(hour.timestamp()) // 3600
            if not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(CAST(:c AS int), CAST(:h AS int))"),
                {"c": _LOCK_CLASS, "h": number},
            ).scalar():
                continue
            marked = conn.execute(
                text(
                    f"INSERT INTO {TASK_COMPACTED_TABLE} (hour) VALUES (:hour)"
                    " ON CONFLICT DO NOTHING RETURNING hour"
                ),
                {"hour": hour},
            ).first()
            if marked is not None:  # not merged by another process since the list was read
                removed += int(conn.execute(_MERGE, {"hour": hour}).scalar() or 0)
    return removed


class HourlyMerger:
    """What a ledger writer calls after each write: at most once an hour it merges the
    closed hours (``compact_task_rollups``) on a thread of its own, so that writes never
    wait for it; a failure only leaves rows unmerged (counted, logged)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hour: int | None = None
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Start a merge unless one ran this hour or is still running."""
        hour = int(time.time() // 3600)
        if hour == self._hour or (self._thread is not None and self._thread.is_alive()):
            return
        self._hour = hour
        self._thread = threading.Thread(
            target=self._merge, name="graphthrift-ledger-merge", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for a running merge; one cut short rolls back whole, so nothing is lost."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _merge(self) -> None:
        try:
            compact_task_rollups(self.store)
        except Exception as exc:
            diagnostics.count(
                "ledger_compaction_failure",
                "graphthrift: merging the per-task rollups of closed hours failed (%r); reads"
                " sum their rows as they are",
                exc,
            )
