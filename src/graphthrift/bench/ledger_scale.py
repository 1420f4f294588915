"""``graphthrift bench ledger --scale N``: ``report`` and ``alerts`` over N ledger rows.

The rows are generated in the database with ``generate_series`` (in 1M-row statements, so
the rollup trigger runs as it does for real batches), spread over ``N / 100k`` days (the
seed's 100,000 requests a day, at least a week, at most a year) in monthly partitions.
Rows come in runs of 8 (7 calls of kinds ``llm``, ``cache_hit``, ``route`` or ``refusal``,
then the run's outcome, kind ``task``), 3 runs to a thread: 100M rows are 12.5M runs and
4.2M threads. A thread keeps one of 20 tag sets (tenant of 20, feature of 5, prompt version
of 2); model (2) and node (4) vary by call.

It times ``Ledger.report`` by several rolled-up tags over all time (from the rollups), by
``thread_id`` and by ``run_id`` (raw rows: over more than ``RAW_REPORT_MAX_ROWS`` rows with
no ``since`` they cover the last 24 hours, and ``raw_reports_bounded`` gives the message),
``report --per task`` as the CLI runs it (bounded the same way), and ``check_alerts`` over
the last 24 hours with its default 7-day baseline.

Figures: ``rows``, ``rollup_rows``, ``task_rollup_rows`` (per-task rollups), ``runs``, ``load_s``, ``report_seconds_by`` (median of
3 per grouping), ``report_seconds`` (the slowest grouping), ``report_by_thread_id_seconds``,
``report_by_run_id_seconds``, ``report_per_task_seconds`` (median of 3), ``alerts_seconds``
(median of 3), and ``alerts_seconds_10m_rows`` (the same figure when ``rows`` is 10M or
more, else ``None``). Targets at 100M rows: report < 1 s (by any tag, per task too),
alerts < 5 s.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.console import Console
from sqlalchemy import text

from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.schema import ADD_MONTH_FUNCTION, LEDGER_TABLE, ROLLUP_TABLE
from graphthrift.ledger.task_rollups import TASK_OUTCOME_TABLE, TASK_ROLLUP_TABLE
from graphthrift.ops.alerts import check_alerts
from graphthrift.ops.tasks import cost_per_task, task_range
from graphthrift.store.postgres import Store

SCALE_ROWS = {"quick": 200_000, "default": 1_000_000, "full": 100_000_000}
TARGETS = {"report_seconds": 1.0, "report_per_task_seconds": 1.0, "alerts_seconds": 5.0}
_CHUNK = 1_000_000
_ROWS_PER_DAY = 100_000

_CALLS_PER_RUN = 8  # 7 calls and the run's outcome row (kind ``task``)
_RUNS_PER_THREAD = 3

# Row g belongs to run g / 8 and thread g / 24: a run's rows sit within seconds of each other,
# its tags (tenant, feature, prompt version) are its thread's, and its last row is the task's
# outcome, so ``report --per task`` and groupings by thread or run see realistic cardinality
# (100M rows: 12.5M runs, 4.2M threads).
_INSERT = f"""
    INSERT INTO {LEDGER_TABLE} (ts, kind, tenant_id, feature, route, prompt_version, model,
        node, thread_id, run_id, input_tokens, output_tokens, cached_tokens, cost_usd,
        latency_ms, success, retry, saved_tokens)
    SELECT CAST(:end AS timestamptz) - interval '1 second'
            * ((((g / {_CALLS_PER_RUN}) * 7919) % :span) + {_CALLS_PER_RUN} - g % {_CALLS_PER_RUN}),
        CASE WHEN g % {_CALLS_PER_RUN} = {_CALLS_PER_RUN - 1} THEN 'task'
             WHEN g % 10 = 0 THEN 'cache_hit' WHEN g % 10 = 1 THEN 'route'
             WHEN g % 97 = 0 THEN 'refusal' ELSE 'llm' END,
        'tenant-' || (t % 60) % 20, 'feature-' || (t % 60) % 5,
        CASE WHEN g % 10 = 1 AND g % 7 = 0 THEN 'escalated' ELSE NULL END,
        'v' || (t % 60) % 2, CASE WHEN g % 2 = 0 THEN 'gpt-4o-mini' ELSE 'gpt-4o' END,
        'node-' || g % 4, 'thread-' || t, 'run-' || g / {_CALLS_PER_RUN},
        500 + g % 1500, 50 + g % 300, g % 200, (g % 1000) / 1e6, 200 + g % 900,
        CASE WHEN g % {_CALLS_PER_RUN} = {_CALLS_PER_RUN - 1} THEN (g / {_CALLS_PER_RUN}) % 5 <> 0
             ELSE g % 50 <> 0 END,
        g % 23 = 0, 0
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
        LATERAL (SELECT g / {_CALLS_PER_RUN * _RUNS_PER_THREAD} AS t) AS th
"""


def scale_rows(mode_name: str, requested: int | None) -> int:
    """The row count of this run: ``--scale N`` if given, else by run size."""
    return requested if requested else SCALE_ROWS[mode_name]


def load(store: Store, rows: int, end: datetime, console: Console | None = None) -> float:
    """Generate ``rows`` ledger rows ending at ``end``; return the seconds it took."""
    days = min(365, max(7, rows // _ROWS_PER_DAY))
    span = days * 86_400
    t0 = time.perf_counter()
    with store.deadline(None), store.connect() as conn:
        month = (end - timedelta(days=days)).date().replace(day=1)
        while month <= end.date():
            conn.execute(text(f"SELECT {ADD_MONTH_FUNCTION}(:m)"), {"m": month})
            month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    for lo in range(1, rows + 1, _CHUNK):
        hi = min(rows, lo + _CHUNK - 1)
        with store.deadline(None), store.connect() as conn:
            conn.execute(text(_INSERT), {"end": end, "span": span, "lo": lo, "hi": hi})
        if console is not None:
            console.log(f"bench ledger --scale: {hi:,} of {rows:,} rows")
    with store.deadline(None), store.connect() as conn:
        conn.execute(text(f"ANALYZE {LEDGER_TABLE}"))
        conn.execute(text(f"ANALYZE {ROLLUP_TABLE}"))
        conn.execute(text(f"ANALYZE {TASK_ROLLUP_TABLE}"))
        conn.execute(text(f"ANALYZE {TASK_OUTCOME_TABLE}"))
    return time.perf_counter() - t0


def time_reports(ledger: Ledger, groupings: Sequence[list[str]]) -> dict[str, float]:
    """Median seconds of 3 ``report`` calls per grouping, each warmed once first."""
    timings: dict[str, float] = {}
    for by in groupings:
        ledger.report(by)  # warm the buffer cache
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            ledger.report(by)
            samples.append(time.perf_counter() - t0)
        timings[",".join(by)] = round(statistics.median(samples), 4)
    return timings


def time_per_task(store: Store, until: datetime) -> tuple[float, str | None]:
    """Median seconds of 3 ``report --per task`` reads (as the CLI runs them: bounded on a
    big ledger, then cost per successful run by prompt version), and the bound's message."""
    samples = []
    bounded: str | None = None
    for n in range(4):  # the first one warms the buffer cache
        t0 = time.perf_counter()
        with store.connect() as conn:
            read = task_range(conn, "report --per task", None, until)
        cost_per_task(store, ["prompt_version"], since=read.since, until=read.until)
        if n:
            samples.append(time.perf_counter() - t0)
        bounded = read.bounded
    return round(statistics.median(samples), 4), bounded


def measure(store: Store, rows: int, end: datetime) -> dict[str, Any]:
    """Time report by several tags, by thread and run id, per task, and alerts on a store
    that holds the generated rows."""
    ledger = Ledger(store)
    with store.deadline(None):
        by_tag = time_reports(
            ledger,
            (
                ["tenant_id"],
                ["feature", "model"],
                ["prompt_version", "day"],
                ["thread_id"],
                ["run_id"],
            ),
        )
        bounded = ledger.report(["thread_id"]).range.bounded
        per_task_s, per_task_bounded = time_per_task(store, end)
        alert_samples = []
        found = 0
        for _ in range(3):
            t0 = time.perf_counter()
            found = len(check_alerts(store, until=end))
            alert_samples.append(time.perf_counter() - t0)
        with store.connect() as conn:
            raw = conn.execute(text(f"SELECT count(*) FROM {LEDGER_TABLE}")).scalar()
            rolled = conn.execute(text(f"SELECT count(*) FROM {ROLLUP_TABLE}")).scalar()
            per_task = conn.execute(text(f"SELECT count(*) FROM {TASK_ROLLUP_TABLE}")).scalar()
            runs = conn.execute(
                text(f"SELECT count(*) FROM {LEDGER_TABLE} WHERE kind = 'task'")
            ).scalar()
    ledger.close()
    alerts_s = round(statistics.median(alert_samples), 4)
    return {
        "rows": int(raw or 0),
        "rollup_rows": int(rolled or 0),
        "task_rollup_rows": int(per_task or 0),
        "runs": int(runs or 0),
        "report_seconds_by": by_tag,
        "report_seconds": max(by_tag.values()),
        "report_by_thread_id_seconds": by_tag["thread_id"],
        "report_by_run_id_seconds": by_tag["run_id"],
        "report_per_task_seconds": per_task_s,
        "raw_reports_bounded": bounded,
        "per_task_bounded": per_task_bounded,
        "alerts_seconds": alerts_s,
        "alerts_seconds_10m_rows": alerts_s if rows >= 10_000_000 else None,
        "alerts_found": found,
    }


def run_scale(store: Store, rows: int, console: Console) -> dict[str, Any]:
    """Load ``rows`` into ``store`` (a scratch database) and measure."""
    free = shutil.disk_usage(store.home).free
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    load_s = load(store, rows, end, console)
    figures = measure(store, rows, end)
    figures.update(
        load_s=round(load_s, 1),
        disk_free_gb_before=round(free / 2**30, 1),
        targets=TARGETS,
        meets_targets=(
            {k: figures[k] <= v for k, v in TARGETS.items()}
            if rows >= 100_000_000
            else "targets are set at 100M rows"
        ),
    )
    return figures
