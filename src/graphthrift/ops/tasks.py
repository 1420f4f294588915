"""Cost per successful task: what a finished piece of work costs, not what a call costs.

A task is a LangGraph run (``run_id``, the default) or a thread (``thread_id``). Its outcome
is a ledger row of kind ``task``: written by ``mark_task(success=...)`` (explicit feedback)
or by ``graphthrift.langchain.TaskTracker`` when the graph run ends or raises. The latest
outcome row of a task wins, so feedback given after the run overrides the graph's outcome.

``cost_per_task`` groups LLM rows by tenant, feature, route or prompt_version and divides
the cost of the tasks with a known outcome by the number that succeeded (retries, and what
the caches saved, are reported beside it). ``compare`` puts a confidence interval on the
change between two values of one dimension (e.g. two prompt versions) with a bootstrap
over tasks.

Both read the per-task rollups (``graphthrift.ledger.task_rollups``) that the ledger's
trigger keeps: each task's latest outcome as one row, and its spend by hour and tag set.
A range that starts or ends off the hour reads raw rows for the spend instead (same
figures, slower).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import text

from graphthrift.errors import GraphthriftError, UnknownReportKey
from graphthrift.kernel import current_run_tags, run_tags
from graphthrift.ledger.query import (
    RAW_REPORT_MAX_ROWS,
    ReportRange,
    bounded_range,
    ceil_hour,
    on_the_hour,
)
from graphthrift.ledger.records import LedgerRecord
from graphthrift.ledger.schema import LEDGER_TABLE, bounded_tag, bounded_value
from graphthrift.ledger.task_rollups import (
    TASK_KEYS,
    TASK_ROLLUP_TABLE,
    TASK_SUMS,
    TASK_TAGS,
    per_task,
)

__all__ = [
    "TASK_DIMENSIONS",
    "TASK_KEYS",
    "TaskNotIdentified",
    "check_task_report",
    "compare",
    "cost_per_task",
    "mark_task",
    "set_task_ledger",
    "task_range",
    "task_record",
]

#: Tags cost per task can be grouped and compared by (those the per-task rollups keep).
TASK_DIMENSIONS: tuple[str, ...] = TASK_TAGS
_TAGS = ("tenant_id", "feature", "route", "prompt_version", "thread_id", "run_id", "node")

_default_ledger: Any | None = None


class TaskNotIdentified(GraphthriftError, ValueError):
    """An outcome was given without a run or thread to attach it to."""

    def __init__(self, success: bool) -> None:
        self.success = success
        super().__init__(
            f"mark_task(success={success}) needs the task's run_id or thread_id: pass"
            " config= (the run's config), run_id= or thread_id=, or call it inside a run"
            " whose tags are bound (graphthrift.kernel.bound_run_tags)"
        )


def set_task_ledger(ledger: Any | None) -> None:
    """The ledger ``mark_task`` writes to when it is not given one."""
    global _default_ledger
    _default_ledger = ledger


def task_record(success: bool, *, source: str = "mark", **tags: Any) -> LedgerRecord:
    """The ledger row that states a task's outcome (kind ``task``)."""
    if not isinstance(success, bool):
        raise TypeError(f"success must be True or False, got {success!r}")
    unknown = set(tags) - set(_TAGS)
    if unknown:
        raise TypeError(f"unknown task tags {sorted(unknown)}; known tags are {_TAGS}")
    if tags.get("run_id") is None and tags.get("thread_id") is None:
        raise TaskNotIdentified(success)
    clean: dict[str, Any] = {k: None if v is None else str(v) for k, v in tags.items()}
    return LedgerRecord(kind="task", success=success, extra={"source": source}, **clean)


def mark_task(
    success: bool,
    *,
    ledger: Any | None = None,
    config: Mapping[str, Any] | None = None,
    **tags: Any,
) -> LedgerRecord:
    """Record a task's outcome (user feedback, a grader, a business check).

    The task is the run or thread in ``config`` (or in the bound run tags), unless
    ``run_id=`` / ``thread_id=`` name it. Returns the record queued in the ledger.

    Example:
        >>> mark_task(success=True, ledger=ledger, run_id=run_id, tenant_id="acme")
    """
    target = ledger if ledger is not None else _default_ledger
    if target is None:
        raise ValueError(
            "mark_task needs a ledger: pass ledger= or call graphthrift.ops.set_task_ledger"
        )
    found = run_tags(config) if config is not None else dict(current_run_tags() or {})
    merged: dict[str, Any] = {k: found.get(k) for k in _TAGS if found.get(k) is not None}
    merged.update({k: v for k, v in tags.items() if v is not None})
    record = task_record(success, **merged)
    target.record(record)
    return record


def _check(what: str, keys: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """``keys`` when all are ``allowed``; else ``UnknownReportKey`` naming the bad ones
    plainly (``what`` says what was asked: "report by", "compare by"...)."""
    unknown = [k for k in keys if k not in allowed]
    if unknown:
        raise UnknownReportKey(what, unknown, allowed)
    return list(keys)


def check_task_report(
    by: Sequence[str] = (),
    *,
    task: str = "run_id",
    dimension: str | None = None,
    filters: Sequence[str] = (),
) -> None:
    """Raise ``UnknownReportKey`` for a bad grouping, task key, compared dimension or filter
    before anything is read: ``cost_per_task`` and ``compare`` check through it, and the CLI
    calls it before it counts a big ledger."""
    _check("count tasks by", [task], TASK_KEYS)
    _check("report by", by, TASK_DIMENSIONS)
    if dimension is not None:
        _check("compare by", [dimension], TASK_DIMENSIONS)
    for key in filters:
        _check("filter tasks on", [key], TASK_DIMENSIONS)


def task_range(
    conn: Any,
    what: str,
    since: datetime | None,
    until: datetime | None,
    *,
    now: datetime | None = None,
    max_raw_rows: int | None = RAW_REPORT_MAX_ROWS,
) -> ReportRange:
    """``bounded_range`` for a task report: on a big ledger, the last 24 whole hours up to
    the end of the current one, so that the read stays on the hour and the per-task rollups
    answer it (a bound ending at an odd minute would read raw rows)."""
    return bounded_range(
        conn,
        what,
        since,
        until,
        max_raw_rows=max_raw_rows,
        now=ceil_hour(now or datetime.now(UTC)),
        reason="reads a row per task and hour",
    )


def _source(
    task: str,
    since: datetime | None,
    until: datetime | None,
    filters: Mapping[str, Any],
    params: dict[str, Any],
) -> str:
    """A subquery of each task's spend rows (``task``, the tags, the sums of
    ``graphthrift.ledger.task_rollups.TASK_SUMS``) in the range: from the per-task rollups
    when the range is on the hour, else from raw rows (a task's id bounded as the rollups
    bound them, so both read alike; so is a filter's value on the rollups)."""
    hourly = on_the_hour(since) and on_the_hour(until)
    clauses = [f"{task} IS NOT NULL"]
    for n, (key, value) in enumerate(filters.items()):  # keys checked: check_task_report
        clauses.append(f"{key} = :f{n}")
        params[f"f{n}"] = bounded_value(value) if hourly else value
    column = "hour" if hourly else "ts"
    if since is not None:
        clauses.append(f"{column} >= :since")
        params["since"] = since if since.tzinfo else since.replace(tzinfo=UTC)
    if until is not None:
        clauses.append(f"{column} < :until")
        params["until"] = until if until.tzinfo else until.replace(tzinfo=UTC)
    where = " AND ".join(clauses)
    if hourly:
        tags = ", ".join(TASK_TAGS)
        sums = ", ".join(name for name, _ in TASK_SUMS)
        return f"SELECT {task} AS task, {tags}, {sums} FROM {TASK_ROLLUP_TABLE} WHERE {where}"
    return f"""
        SELECT {bounded_tag(task)} AS task, {", ".join(f"{bounded_tag(t)} AS {t}" for t in TASK_TAGS)},
            CASE WHEN kind = 'llm' THEN cost_usd END AS llm_cost_usd,
            CASE WHEN kind = 'llm' AND retry THEN cost_usd END AS retry_cost_usd,
            CASE WHEN kind = 'cache_hit' THEN saved_usd END AS hit_saved_usd,
            cache_savings_usd, saved_usd
        FROM {LEDGER_TABLE} WHERE kind <> 'task' AND {where}
    """


def cost_per_task(
    store: Any,
    by: Sequence[str] = ("prompt_version",),
    *,
    task: str = "run_id",
    since: datetime | None = None,
    until: datetime | None = None,
    **filters: Any,
) -> list[dict[str, Any]]:
    """Cost per successful task grouped by ``by``, most expensive per success first.

    Each row has the group keys and ``tasks``, ``successful``, ``failed``, ``unknown``
    (tasks nobody gave an outcome for: their cost is left out of the ratio and shown as
    ``unknown_cost_usd``), ``cost_usd`` (tasks with an outcome), ``success_rate``,
    ``cost_per_successful_task``, ``retry_cost_usd`` (paid for attempts after the first),
    ``cache_saved_usd`` (cache hits plus providers' prompt caches) and ``saved_usd``.
    A task whose calls span two routes counts in both route groups. ``since``/``until``
    choose the tasks with calls in the range (and only those calls' cost); a task's outcome
    is its latest, whenever it was written.
    """
    if isinstance(by, str):
        by = [k for k in by.split(",") if k]
    check_task_report(by, task=task, filters=list(filters))
    groups = list(by)
    params: dict[str, Any] = {}
    spend = _source(task, since, until, filters, params)
    tasks = per_task(task, spend, groups, since="since" if since is not None else None)
    select_groups = "".join(f"t.g_{k} AS {k}, " for k in groups)
    group_by = ("GROUP BY " + ", ".join(f"t.g_{k}" for k in groups)) if groups else ""
    sql = f"""
        SELECT {select_groups}
            count(*) AS tasks,
            count(*) FILTER (WHERE t.ok) AS successful,
            count(*) FILTER (WHERE NOT t.ok) AS failed,
            count(*) FILTER (WHERE t.ok IS NULL) AS unknown,
            coalesce(sum(t.llm_cost_usd) FILTER (WHERE t.ok IS NOT NULL), 0) AS cost_usd,
            coalesce(sum(t.llm_cost_usd) FILTER (WHERE t.ok IS NULL), 0) AS unknown_cost_usd,
            coalesce(sum(t.retry_cost_usd), 0) AS retry_cost_usd,
            coalesce(sum(t.hit_saved_usd), 0) + coalesce(sum(t.cache_savings_usd), 0)
                AS cache_saved_usd,
            coalesce(sum(t.saved_usd), 0) AS saved_usd
        FROM ({tasks}) AS t
        {group_by}
    """
    with store.connect() as conn:
        # a day of tasks grouped by id outgrows the default 4 MB and sorts on disk; with
        # room it hashes (this transaction only: poolers keep no state)
        conn.execute(text("SET LOCAL work_mem = '64MB'"))
        rows = [dict(r) for r in conn.execute(text(sql), params).mappings()]
    for row in rows:
        for key in ("tasks", "successful", "failed", "unknown"):
            row[key] = int(row[key] or 0)
        for key in (
            "cost_usd",
            "unknown_cost_usd",
            "retry_cost_usd",
            "cache_saved_usd",
            "saved_usd",
        ):
            row[key] = float(row[key] or 0.0)
        known = row["successful"] + row["failed"]
        row["success_rate"] = row["successful"] / known if known else None
        row["cost_per_successful_task"] = (
            row["cost_usd"] / row["successful"] if row["successful"] else None
        )
    # ties (groups without a success, equal ratios) in group order, not the plan's
    rows.sort(key=lambda r: tuple(str(r[k]) for k in groups))
    # no success first (its cost bought nothing), then dearest per success; a real 0.0 last
    rows.sort(
        key=lambda r: (
            r["cost_per_successful_task"] is not None,
            -(r["cost_per_successful_task"] or 0.0),
        )
    )
    return rows


def _task_costs(
    store: Any,
    dimension: str,
    value: str,
    task: str,
    since: datetime | None,
    until: datetime | None,
    filters: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Each task's LLM cost and outcome where ``dimension`` is ``value`` (tasks with an
    outcome only), in task order: the seeded bootstrap in ``compare`` draws by position, so
    rows in whatever order the plan returns them gave a different interval from the same
    tasks (the rollup and raw-row paths did)."""
    params: dict[str, Any] = {}
    spend = _source(task, since, until, {**filters, dimension: value}, params)
    sql = f"""
        SELECT coalesce(t.llm_cost_usd, 0) AS cost, t.ok
        FROM ({per_task(task, spend, since="since" if since is not None else None)}) AS t
        WHERE t.ok IS NOT NULL
        ORDER BY t.task_tenant, t.task
    """
    with store.connect() as conn:
        conn.execute(text("SET LOCAL work_mem = '64MB'"))  # as cost_per_task
        rows = conn.execute(text(sql), params).all()
    cost = np.array([float(r.cost) for r in rows], dtype=float)
    ok = np.array([1.0 if r.ok else 0.0 for r in rows], dtype=float)
    return cost, ok


def compare(
    store: Any,
    dimension: str,
    values: Sequence[str],
    *,
    task: str = "run_id",
    confidence: float = 0.95,
    resamples: int = 2_000,
    seed: int = 0,
    since: datetime | None = None,
    until: datetime | None = None,
    **filters: Any,
) -> dict[str, Any]:
    """The change in cost per successful task from ``values[0]`` to ``values[1]``.

    The interval is a percentile bootstrap over tasks (each value's tasks resampled with
    replacement, ``resamples`` times, seeded): it needs no assumption about how costs are
    distributed, and a ratio of sums has no simple closed-form interval.
    """
    check_task_report(task=task, dimension=dimension, filters=list(filters))
    if dimension in filters:
        raise ValueError(
            f"compare by {dimension} takes its two values from values=, not from a"
            f" {dimension}= filter too (got {dimension}={filters[dimension]!r})"
        )
    if len(values) != 2:
        raise ValueError(f"compare needs two values of {dimension}, got {list(values)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    rng = np.random.default_rng(seed)
    sides: list[dict[str, Any]] = []
    draws: list[np.ndarray] = []
    for value in values:
        cost, ok = _task_costs(store, dimension, value, task, since, until, filters)
        successes = float(ok.sum())
        sides.append(
            {
                "value": value,
                "tasks": int(cost.size),
                "successful": int(successes),
                "success_rate": successes / cost.size if cost.size else None,
                "cost_usd": float(cost.sum()),
                "cost_per_successful_task": float(cost.sum()) / successes if successes else None,
            }
        )
        if cost.size == 0 or successes == 0:
            draws.append(np.full(resamples, np.nan))
            continue
        idx = rng.integers(0, cost.size, size=(resamples, cost.size))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = cost[idx].sum(axis=1) / ok[idx].sum(axis=1)
        ratio[~np.isfinite(ratio)] = np.nan
        draws.append(ratio)
    a, b = sides
    out: dict[str, Any] = {
        "dimension": dimension,
        "task": task,
        "a": a,
        "b": b,
        "confidence": confidence,
        "resamples": resamples,
        "delta": None,
        "delta_pct": None,
        "ci_low": None,
        "ci_high": None,
    }
    if a["cost_per_successful_task"] is None or b["cost_per_successful_task"] is None:
        return out
    diff = draws[1] - draws[0]
    diff = diff[np.isfinite(diff)]
    tail = (1 - confidence) / 2 * 100
    out["delta"] = b["cost_per_successful_task"] - a["cost_per_successful_task"]
    out["delta_pct"] = out["delta"] / a["cost_per_successful_task"] * 100
    if diff.size:
        out["ci_low"] = float(np.percentile(diff, tail))
        out["ci_high"] = float(np.percentile(diff, 100 - tail))
    return out
