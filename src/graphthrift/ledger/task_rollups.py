"""Per-task rollups (migration 7): each run's and thread's spend by hour and tag set, and each
task's latest outcome, both kept by the ledger's insert trigger.

Cost per successful task groups by task, which the hourly rollups (keyed by tags alone)
cannot do. Read from raw rows, ``report --per task`` over the last day took 1.6 s at 100M
rows: every parallel worker first rebuilt each task's latest outcome from the outcome rows,
then sorted the day's rows to count tasks. Here an outcome is one row per task, upserted as
outcome rows are written (the latest ``ts``, then ``id``, wins; a task is its id within its
tenant), and a task's calls are
summed per hour and tag set: a run's calls share an hour and differ in model and route
only, so once an hour is merged there are about a third as many rows as raw ones, all in
their hour's index range. Since migration 8 the trigger appends those sums per batch rather
than upserting them (reads sum rows per task), and ``graphthrift.ledger.task_compaction``
merges a closed hour's rows.

Like raw rows, and unlike the tag rollups, these rows name runs and threads, so retention
deletes them with the raw months it drops (``graphthrift.ledger.partitions``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Float, Table, Text

from graphthrift.ledger.schema import (
    DAILY_TABLE,
    LEDGER_TABLE,
    NULL_KEY,
    bounded_tag,
    metadata,
    rollup_insert,
    rollup_trigger_function,
)
from graphthrift.store.migration import Migration

__all__ = [
    "TASK_COMPACTED_TABLE",
    "TASK_KEYS",
    "TASK_OUTCOME_TABLE",
    "TASK_ROLLUP_MIGRATIONS",
    "TASK_ROLLUP_TABLE",
    "TASK_SUMS",
    "TASK_TAGS",
    "outcome_upsert",
    "per_task",
    "task_rollup_append",
    "task_rollup_insert",
    "task_rollup_merge",
]

TASK_ROLLUP_TABLE = "graphthrift_ledger_task_hourly"
TASK_OUTCOME_TABLE = "graphthrift_ledger_task_outcomes"
#: The closed hours whose task rollups were merged to one row per key.
TASK_COMPACTED_TABLE = "graphthrift_ledger_task_compacted"

#: What a task is: a graph run or a conversation thread.
TASK_KEYS: tuple[str, ...] = ("run_id", "thread_id")
#: The tags a task's spend is summed by (what cost per task can be grouped and filtered on).
TASK_TAGS: tuple[str, ...] = ("tenant_id", "feature", "route", "prompt_version", "model")

TASK_SUMS: tuple[tuple[str, str], ...] = (
    ("rows", "count(*)"),
    ("llm_cost_usd", "coalesce(sum(cost_usd) FILTER (WHERE kind = 'llm'), 0)"),
    ("retry_cost_usd", "coalesce(sum(cost_usd) FILTER (WHERE kind = 'llm' AND retry), 0)"),
    ("hit_saved_usd", "coalesce(sum(saved_usd) FILTER (WHERE kind = 'cache_hit'), 0)"),
    ("cache_savings_usd", "coalesce(sum(cache_savings_usd), 0)"),
    ("saved_usd", "coalesce(sum(saved_usd), 0)"),
)
"""Each column of a task rollup and the aggregate over a task's non-outcome rows it holds."""

_COLUMNS = ("hour", *TASK_KEYS, *TASK_TAGS)
_KEY = ", ".join(["hour", *(f"(coalesce({c}, '{NULL_KEY}'))" for c in _COLUMNS[1:])])

task_rollup_table = Table(
    TASK_ROLLUP_TABLE,
    metadata,
    Column("hour", DateTime(timezone=True), nullable=False),
    *(Column(c, Text) for c in (*TASK_KEYS, *TASK_TAGS)),
    *(Column(n, BigInteger if n == "rows" else Float) for n, _ in TASK_SUMS),
)

task_outcome_table = Table(
    TASK_OUTCOME_TABLE,
    metadata,
    Column("task_key", Text, primary_key=True),
    Column("task", Text, primary_key=True),
    Column("tenant", Text, primary_key=True),
    Column("ok", Boolean, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("id", BigInteger, nullable=False),
)


def _task_rollup_rows(source: str) -> str:
    """SQL for ``source``'s call rows (a table or transition table) summed by hour, task
    keys and tags; ids and tags are bounded as the tag rollups bound them."""
    bounded = ", ".join(bounded_tag(c) for c in _COLUMNS[1:])
    aggs = ", ".join(expr for _, expr in TASK_SUMS)
    return f"""
        SELECT date_trunc('hour', ts, 'UTC'), {bounded}, {aggs}
        FROM {source}
        WHERE kind <> 'task' AND (run_id IS NOT NULL OR thread_id IS NOT NULL)
        GROUP BY {_ORDER}"""


_NAMES = ", ".join(_COLUMNS)
_SUM_NAMES = ", ".join(name for name, _ in TASK_SUMS)
_ORDER = ", ".join(str(i) for i in range(1, len(_COLUMNS) + 1))


def task_rollup_insert(source: str) -> str:
    """SQL that adds ``source``'s call rows to the task rollups, one row per key (migration
    7, and its backfill). Keys go in one sorted order, so concurrent writers wait instead of
    deadlocking."""
    updates = ", ".join(f"{name} = h.{name} + EXCLUDED.{name}" for name, _ in TASK_SUMS)
    return f"""
        INSERT INTO {TASK_ROLLUP_TABLE} AS h ({_NAMES}, {_SUM_NAMES}){_task_rollup_rows(source)}
        ORDER BY {_ORDER}
        ON CONFLICT ({_KEY}) DO UPDATE SET {updates}
    """


def task_rollup_append(source: str) -> str:
    """SQL that appends ``source``'s call rows, summed per key, to the task rollups (the
    trigger's statement since migration 8). Reads sum rows per key, so a key may have a row
    per batch: upserting them cost about a fifth of the ledger's write throughput, and
    ``graphthrift.ledger.task_compaction`` merges them once their hour has closed."""
    return f"""
        INSERT INTO {TASK_ROLLUP_TABLE} ({_NAMES}, {_SUM_NAMES}){_task_rollup_rows(source)}
    """


def task_rollup_merge() -> str:
    """SQL that merges the task rollups of the hour ``:hour`` to one row per key, in one
    statement (a batch committed meanwhile is merged or left beside, never lost or counted
    twice), and returns how many rows that removed (``graphthrift.ledger.task_compaction``)."""
    sums = ", ".join(f"sum({name})" for name, _ in TASK_SUMS)
    return f"""
        WITH gone AS (DELETE FROM {TASK_ROLLUP_TABLE} WHERE hour = :hour RETURNING *),
        merged AS (
            INSERT INTO {TASK_ROLLUP_TABLE} ({_NAMES}, {_SUM_NAMES})
            SELECT {_NAMES}, {sums} FROM gone GROUP BY {_NAMES}
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM merged)
    """


def outcome_upsert(source: str) -> str:
    """SQL that makes each task's latest outcome row in ``source`` its outcome, unless one
    written later is already held (a late batch from a spill never overrides newer
    feedback). A task is its id within its tenant (``NULL_KEY`` when the row names none):
    thread ids such as ``"1"`` recur across tenants. Rows go in key order, as the rollups."""
    parts = " UNION ALL ".join(
        f"SELECT '{key}' AS task_key, {bounded_tag(key)} AS task,"
        f" coalesce({bounded_tag('tenant_id')}, '{NULL_KEY}') AS tenant, success, ts, id"
        f" FROM {source} WHERE kind = 'task' AND {key} IS NOT NULL"
        for key in TASK_KEYS
    )
    return f"""
        INSERT INTO {TASK_OUTCOME_TABLE} AS o (task_key, task, tenant, ok, ts, id)
        SELECT DISTINCT ON (task_key, task, tenant) task_key, task, tenant, success, ts, id
        FROM ({parts}) AS s
        ORDER BY task_key, task, tenant, ts DESC, id DESC
        ON CONFLICT (task_key, task, tenant) DO UPDATE
            SET ok = EXCLUDED.ok, ts = EXCLUDED.ts, id = EXCLUDED.id
            WHERE (EXCLUDED.ts, EXCLUDED.id) > (o.ts, o.id)
    """


def per_task(task: str, spend: str, groups: Sequence[str] = (), *, since: str | None = None) -> str:
    """SQL for ``spend`` (a subquery of task rollup shape: ``task``, the tags and the sums)
    summed per task and group, with the task's outcome as ``ok`` (NULL when none). Group
    keys come out as ``g_<key>``; a task is its id within its tenant, so each row is one
    task of one group, and counting rows counts tasks (no distinct sort).

    The outcome is the latest of the one given within the task's tenant and the one given
    naming no tenant (which speaks for the id everywhere). A task whose calls name no tenant
    takes the latest outcome of its id whatever tenant that names: a tracker given a tenant
    beside calls that were not must not leave every run unknown. With ``since`` (the name of
    a bind parameter), outcomes written since then are hash-joined in one pass, and only a
    task with none there (a thread marked before the range, or never) or with no tenant looks
    its outcome up through the index: a lookup per task cost 0.25 s for a day of 37,500 runs.
    """
    keys = "".join(f"s.{k} AS g_{k}, " for k in groups)
    by = "".join(f"s.{k}, " for k in groups)
    sums = ", ".join(f"sum(s.{name}) AS {name}" for name, _ in TASK_SUMS[1:])
    lookup = f"""(
        SELECT ok FROM {TASK_OUTCOME_TABLE}
        WHERE task_key = '{task}' AND task = p.task
            AND (p.task_tenant IS NULL OR tenant IN (p.task_tenant, '{NULL_KEY}'))
        ORDER BY ts DESC, id DESC LIMIT 1)"""
    grouped = f"""
        SELECT {keys}s.tenant_id AS task_tenant, s.task, {sums}
        FROM ({spend}) AS s
        GROUP BY {by}s.tenant_id, s.task
    """
    if since is None:
        return f"SELECT p.*, {lookup} AS ok FROM ({grouped}) AS p"
    return f"""
        WITH recent AS MATERIALIZED (
            SELECT task, tenant, ok, ts, id FROM {TASK_OUTCOME_TABLE}
            WHERE task_key = '{task}' AND ts >= :{since}
        )
        SELECT p.*, CASE
                WHEN p.task_tenant IS NULL OR (t.task IS NULL AND n.task IS NULL) THEN {lookup}
                WHEN n.task IS NULL OR (t.task IS NOT NULL AND (t.ts, t.id) > (n.ts, n.id))
                    THEN t.ok
                ELSE n.ok END AS ok
        FROM ({grouped}) AS p
        LEFT JOIN recent t ON t.task = p.task AND t.tenant = p.task_tenant
        LEFT JOIN recent n ON n.task = p.task AND n.tenant = '{NULL_KEY}'
    """


_ROLLUP_COLUMNS = ",\n".join(
    [
        "hour timestamptz NOT NULL",
        *(f"{c} text" for c in (*TASK_KEYS, *TASK_TAGS)),
        *(
            f"{name} {'bigint' if name == 'rows' else 'double precision'} NOT NULL DEFAULT 0"
            for name, _ in TASK_SUMS
        ),
    ]
)

TASK_ROLLUP_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        7,
        "ledger per-task rollups and outcomes",
        (
            # writers wait until the trigger adds to both tables and the backfill is done
            f"LOCK TABLE {LEDGER_TABLE} IN SHARE ROW EXCLUSIVE MODE",
            f"CREATE TABLE IF NOT EXISTS {TASK_ROLLUP_TABLE} ({_ROLLUP_COLUMNS})",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {TASK_ROLLUP_TABLE}_key"
            f" ON {TASK_ROLLUP_TABLE} ({_KEY})",
            f"CREATE INDEX IF NOT EXISTS {TASK_ROLLUP_TABLE}_hour ON {TASK_ROLLUP_TABLE} (hour)",
            f"""
            CREATE TABLE IF NOT EXISTS {TASK_OUTCOME_TABLE} (
                task_key text NOT NULL,
                task text NOT NULL,
                tenant text NOT NULL,
                ok boolean NOT NULL,
                ts timestamptz NOT NULL,
                id bigint NOT NULL,
                PRIMARY KEY (task_key, task, tenant)
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {TASK_OUTCOME_TABLE}_ts ON {TASK_OUTCOME_TABLE} (ts)",
            rollup_trigger_function(
                rollup_insert("new_rows"),
                rollup_insert("new_rows", DAILY_TABLE, "day"),
                task_rollup_insert("new_rows"),
                outcome_upsert("new_rows"),
            ),
            # a big ledger's backfill groups millions of runs: let it hash and sort in memory
            "SET LOCAL work_mem = '256MB'",
            f"DELETE FROM {TASK_ROLLUP_TABLE}",
            f"DELETE FROM {TASK_OUTCOME_TABLE}",
            task_rollup_insert(LEDGER_TABLE),
            outcome_upsert(LEDGER_TABLE),
            f"ANALYZE {TASK_ROLLUP_TABLE}",
            f"ANALYZE {TASK_OUTCOME_TABLE}",
            "SET LOCAL work_mem TO DEFAULT",  # the migrations after this one run as before
        ),
    ),
    Migration(
        8,
        "ledger per-task rollups appended, merged once their hour closes",
        (
            f"LOCK TABLE {LEDGER_TABLE} IN SHARE ROW EXCLUSIVE MODE",
            rollup_trigger_function(
                rollup_insert("new_rows"),
                rollup_insert("new_rows", DAILY_TABLE, "day"),
                task_rollup_append("new_rows"),
                outcome_upsert("new_rows"),
            ),
            f"DROP INDEX IF EXISTS {TASK_ROLLUP_TABLE}_key",
            f"CREATE TABLE IF NOT EXISTS {TASK_COMPACTED_TABLE} (hour timestamptz PRIMARY KEY)",
            # the closed hours hold one row per key already: nothing to merge there
            f"""
            INSERT INTO {TASK_COMPACTED_TABLE}
            SELECT DISTINCT hour FROM {TASK_ROLLUP_TABLE}
            WHERE hour < date_trunc('hour', now(), 'UTC')
            ON CONFLICT DO NOTHING
            """,
        ),
    ),
)
