"""The ledger's table, its hourly and daily rollups and their migrations (versions 1-6; the
per-task rollups of version 7 are in ``graphthrift.ledger.task_rollups``)."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from graphthrift.store.migration import Migration

metadata = MetaData()

LEDGER_TABLE = "graphthrift_ledger"

ledger_table = Table(
    LEDGER_TABLE,
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("tenant_id", Text),
    Column("feature", Text),
    Column("route", Text),
    Column("prompt_version", Text),
    Column("model", Text),
    Column("node", Text),
    Column("thread_id", Text),
    Column("run_id", Text),
    Column("call_id", Text),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_usd", Float),
    Column("latency_ms", Float),
    Column("success", Boolean, nullable=False),
    Column("error_type", Text),
    Column("usage_source", Text, nullable=False),
    Column("retry", Boolean, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    # added in migration 2: what each mechanism saved
    Column("saved_usd", Float),
    Column("saved_tokens", BigInteger, nullable=False),
    Column("layer", Text),
    Column("extra", JSONB),
    # added in migration 3: prompt-cache writes and what the provider's cache saved
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("cache_savings_usd", Float),
)


LEDGER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "ledger",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
                id bigserial PRIMARY KEY,
                ts timestamptz NOT NULL DEFAULT now(),
                kind text NOT NULL DEFAULT 'llm',
                tenant_id text, feature text, route text, prompt_version text,
                model text, node text, thread_id text, run_id text, call_id text,
                input_tokens bigint NOT NULL DEFAULT 0,
                output_tokens bigint NOT NULL DEFAULT 0,
                cached_tokens bigint NOT NULL DEFAULT 0,
                reasoning_tokens bigint NOT NULL DEFAULT 0,
                cost_usd double precision,
                latency_ms double precision,
                success boolean NOT NULL DEFAULT true,
                error_type text,
                usage_source text NOT NULL DEFAULT 'provider',
                retry boolean NOT NULL DEFAULT false,
                attempt integer NOT NULL DEFAULT 1,
                streamed boolean NOT NULL DEFAULT false
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_ts ON {LEDGER_TABLE} (ts)",
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_tenant_ts ON {LEDGER_TABLE} (tenant_id, ts)",
        ),
    ),
    Migration(
        2,
        "ledger savings columns",
        (
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS saved_usd double precision",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS saved_tokens bigint NOT NULL DEFAULT 0",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS layer text",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS extra jsonb",
            f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_kind_ts ON {LEDGER_TABLE} (kind, ts)",
        ),
    ),
    Migration(
        3,
        "ledger prompt-cache write columns",
        (
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS cache_write_tokens bigint NOT NULL DEFAULT 0",
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS cache_savings_usd double precision",
        ),
    ),
)


# -- hourly rollups (migration 4) ----------------------------------------------------------

ROLLUP_TABLE = "graphthrift_ledger_hourly"
ROLLUP_TAGS: tuple[str, ...] = (  # spelled out: migration 4's key is built from it
    "kind",
    "tenant_id",
    "feature",
    "route",
    "prompt_version",
    "model",
    "node",
    "layer",
)
"""The tags a rollup row is keyed by (with its UTC hour): what ``report`` and ``alerts`` can
group and filter on without reading raw rows. Thread and run ids are not rolled up: keyed by
them, a rollup holds a row per run and day (an eighth of the raw rows at 8 rows a run), and
on 2M rows it cut a report by thread only from 0.99 s to 0.74 s and one by run not at all; the
groups cost, not the rows. Reports by them read raw rows instead, bounded to the last day on a
big ledger (``graphthrift.ledger.query.RAW_REPORT_MAX_ROWS``)."""

# NULL is a tag value of its own; PostgreSQL before 15 has no NULLS NOT DISTINCT, so the key
# maps it to a control character that no real tag is made of.
_NULL_KEY = "\x01"
NULL_KEY = _NULL_KEY
"""What a NULL tag is keyed as in a rollup's unique index."""
_KEY = ", ".join(["hour", "kind", *(f"(coalesce({t}, '{_NULL_KEY}'))" for t in ROLLUP_TAGS[1:])])

ROLLUP_SUMS: tuple[tuple[str, str], ...] = (
    ("rows", "count(*)"),
    ("input_tokens", "sum(input_tokens)"),
    ("output_tokens", "sum(output_tokens)"),
    ("cached_tokens", "sum(cached_tokens)"),
    ("reasoning_tokens", "sum(reasoning_tokens)"),
    ("cache_write_tokens", "sum(cache_write_tokens)"),
    ("cost_usd", "coalesce(sum(cost_usd), 0)"),
    ("unpriced", "count(*) FILTER (WHERE cost_usd IS NULL)"),
    ("successes", "count(*) FILTER (WHERE success)"),
    ("errors", "count(*) FILTER (WHERE NOT success)"),
    ("retries", "count(*) FILTER (WHERE retry)"),
    ("retry_cost_usd", "coalesce(sum(cost_usd) FILTER (WHERE retry), 0)"),
    ("cache_savings_usd", "coalesce(sum(cache_savings_usd), 0)"),
    ("saved_usd", "coalesce(sum(saved_usd), 0)"),
    ("saved_tokens", "sum(saved_tokens)"),
    ("latency_ms", "coalesce(sum(latency_ms), 0)"),
)
"""Each rollup column and the aggregate over raw rows that it holds (all additive)."""

_FLOAT_SUMS = {"cost_usd", "retry_cost_usd", "cache_savings_usd", "saved_usd", "latency_ms"}

DAILY_TABLE = "graphthrift_ledger_daily"
"""The same rollups per UTC day (migration 6; ``hour`` holds the day's midnight), for reports
over whole days: a year is 365 rows per tag set instead of 8,760."""


def _rollup_shape(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("hour", DateTime(timezone=True), nullable=False),
        *(Column(t, Text) for t in ROLLUP_TAGS),
        *(Column(n, Float if n in _FLOAT_SUMS else BigInteger) for n, _ in ROLLUP_SUMS),
    )


rollup_table = _rollup_shape(ROLLUP_TABLE)
daily_table = _rollup_shape(DAILY_TABLE)


TAG_KEY_BYTES = 128
"""A tag longer than this (in bytes) is rolled up as its first 40 characters and its md5: the
raw row keeps it whole, and the rollup key stays far below PostgreSQL's index row limit (a
10 MB tag made every batch that carried it fail)."""


_TAG_HEAD_CHARS = 40
_TAG_MD5_MARK = "...md5:"


def bounded_tag(column: str) -> str:
    """SQL for ``column`` as the rollups key it: itself, or its head and md5 when too long."""
    return (
        f"CASE WHEN octet_length({column}) > {TAG_KEY_BYTES}"
        f" THEN left({column}, {_TAG_HEAD_CHARS}) || '{_TAG_MD5_MARK}' || md5({column})"
        f" ELSE {column} END"
    )


def bounded_value(value: Any) -> Any:
    """``value`` as ``bounded_tag`` keys it (the same rule, in Python): what a filter on a
    rolled-up tag compares with, since a tag over ``TAG_KEY_BYTES`` is its head and md5
    there. Anything but a string is returned as it is."""
    if not isinstance(value, str) or len(value.encode()) <= TAG_KEY_BYTES:
        return value
    digest = hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()
    return value[:_TAG_HEAD_CHARS] + _TAG_MD5_MARK + digest


def rollup_insert(source: str, table: str = ROLLUP_TABLE, unit: str = "hour") -> str:
    """SQL that adds ``source``'s rows (a table or transition table) into the rollups of
    ``unit`` (``hour`` or ``day``, in UTC) in ``table``.

    Keys are upserted in one sorted order, so concurrent writers that touch the same hours
    wait for each other instead of deadlocking.
    """
    tags = ", ".join(ROLLUP_TAGS)
    bounded = ", ".join(bounded_tag(t) for t in ROLLUP_TAGS)
    sums = ", ".join(name for name, _ in ROLLUP_SUMS)
    aggs = ", ".join(expr for _, expr in ROLLUP_SUMS)
    updates = ", ".join(f"{name} = h.{name} + EXCLUDED.{name}" for name, _ in ROLLUP_SUMS)
    order = ", ".join(str(i) for i in range(1, len(ROLLUP_TAGS) + 2))
    return f"""
        INSERT INTO {table} AS h (hour, {tags}, {sums})
        SELECT date_trunc('{unit}', ts, 'UTC'), {bounded}, {aggs}
        FROM {source}
        GROUP BY {order}
        ORDER BY {order}
        ON CONFLICT ({_KEY}) DO UPDATE SET {updates}
    """


def rollup_trigger_function(*inserts: str) -> str:
    """SQL that (re)defines the function of the ledger's insert trigger to run ``inserts``
    (each a statement over the transition table ``new_rows``) for every batch written:
    each rollup migration redefines it with one more."""
    body = "".join(f"\n                {insert};" for insert in inserts)
    return f"""
            CREATE OR REPLACE FUNCTION {ROLLUP_TABLE}_add() RETURNS trigger
            LANGUAGE plpgsql AS $body$
            BEGIN{body}
                RETURN NULL;
            END
            $body$
            """


_ROLLUP_COLUMNS = ",\n".join(
    [
        "hour timestamptz NOT NULL",
        "kind text NOT NULL",
        *(f"{t} text" for t in ROLLUP_TAGS[1:]),
        *(
            f"{name} {'double precision' if name in _FLOAT_SUMS else 'bigint'} NOT NULL DEFAULT 0"
            for name, _ in ROLLUP_SUMS
        ),
    ]
)

LEDGER_MIGRATIONS = (
    *LEDGER_MIGRATIONS,
    Migration(
        4,
        "ledger hourly rollups",
        (
            # writers wait until the trigger exists and the backfill is done: no row is
            # counted twice or missed between the two
            f"LOCK TABLE {LEDGER_TABLE} IN SHARE ROW EXCLUSIVE MODE",
            f"CREATE TABLE IF NOT EXISTS {ROLLUP_TABLE} ({_ROLLUP_COLUMNS})",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {ROLLUP_TABLE}_key ON {ROLLUP_TABLE} ({_KEY})",
            f"CREATE INDEX IF NOT EXISTS {ROLLUP_TABLE}_hour ON {ROLLUP_TABLE} (hour)",
            rollup_trigger_function(rollup_insert("new_rows")),
            f"DROP TRIGGER IF EXISTS {ROLLUP_TABLE}_add ON {LEDGER_TABLE}",
            f"""
            CREATE TRIGGER {ROLLUP_TABLE}_add AFTER INSERT ON {LEDGER_TABLE}
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION {ROLLUP_TABLE}_add()
            """,
            f"DELETE FROM {ROLLUP_TABLE}",
            rollup_insert(LEDGER_TABLE),
        ),
    ),
)


# -- monthly partitions (migration 5) ------------------------------------------------------

DEFAULT_PARTITION = f"{LEDGER_TABLE}_default"
ADD_MONTH_FUNCTION = f"{LEDGER_TABLE}_add_month"

_ADD_MONTH = f"""
    CREATE OR REPLACE FUNCTION {ADD_MONTH_FUNCTION}(m date) RETURNS boolean
    LANGUAGE plpgsql AS $body$
    DECLARE
        part text := format('{LEDGER_TABLE}_%s', to_char(m, 'YYYY_MM'));
        lo timestamptz := date_trunc('month', m::timestamp) AT TIME ZONE 'UTC';
        hi timestamptz := (date_trunc('month', m::timestamp) + interval '1 month')
            AT TIME ZONE 'UTC';
    BEGIN
        IF to_regclass(part) IS NOT NULL THEN
            RETURN false;
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE {LEDGER_TABLE} INCLUDING DEFAULTS)', part);
        -- rows of that month written before it had a partition wait in the default one;
        -- they move over before it is attached (no trigger fires: rollups stay as they are)
        EXECUTE format(
            'WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= %L AND ts < %L'
            ' RETURNING *) INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format(
            'ALTER TABLE {LEDGER_TABLE} ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part, lo, hi);
        RETURN true;
    END
    $body$
"""

LEDGER_MIGRATIONS = (
    *LEDGER_MIGRATIONS,
    Migration(
        5,
        "ledger partitioned by month",
        (
            # one transaction: writers wait, and the table is swapped with every row moved
            f"LOCK TABLE {LEDGER_TABLE} IN ACCESS EXCLUSIVE MODE",
            f"""
            CREATE TABLE {LEDGER_TABLE}_new (
                LIKE {LEDGER_TABLE} INCLUDING DEFAULTS, PRIMARY KEY (id, ts)
            ) PARTITION BY RANGE (ts)
            """,
            f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {LEDGER_TABLE}_new DEFAULT",
            f"INSERT INTO {LEDGER_TABLE}_new SELECT * FROM {LEDGER_TABLE}",
            f"ALTER SEQUENCE {LEDGER_TABLE}_id_seq OWNED BY NONE",
            f"DROP TABLE {LEDGER_TABLE}",
            f"ALTER TABLE {LEDGER_TABLE}_new RENAME TO {LEDGER_TABLE}",
            f"ALTER SEQUENCE {LEDGER_TABLE}_id_seq OWNED BY {LEDGER_TABLE}.id",
            f"CREATE INDEX {LEDGER_TABLE}_ts ON {LEDGER_TABLE} (ts)",
            f"CREATE INDEX {LEDGER_TABLE}_tenant_ts ON {LEDGER_TABLE} (tenant_id, ts)",
            f"CREATE INDEX {LEDGER_TABLE}_kind_ts ON {LEDGER_TABLE} (kind, ts)",
            _ADD_MONTH,
            f"""
            SELECT {ADD_MONTH_FUNCTION}(m) FROM (
                SELECT DISTINCT date_trunc('month', ts AT TIME ZONE 'UTC')::date AS m
                FROM {DEFAULT_PARTITION}
                UNION
                SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + n * interval '1 month')::date
                FROM generate_series(0, 2) AS n
            ) AS months ORDER BY m
            """,
            f"""
            CREATE TRIGGER {ROLLUP_TABLE}_add AFTER INSERT ON {LEDGER_TABLE}
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION {ROLLUP_TABLE}_add()
            """,
        ),
    ),
)


# -- daily rollups (migration 6) -----------------------------------------------------------

_DAILY_SUMS = ", ".join(f"sum({name})" for name, _ in ROLLUP_SUMS)
_DAILY_ORDER = ", ".join(str(i) for i in range(1, len(ROLLUP_TAGS) + 2))

LEDGER_MIGRATIONS = (
    *LEDGER_MIGRATIONS,
    Migration(
        6,
        "ledger daily rollups",
        (
            f"LOCK TABLE {LEDGER_TABLE} IN SHARE ROW EXCLUSIVE MODE",
            f"CREATE TABLE IF NOT EXISTS {DAILY_TABLE} ({_ROLLUP_COLUMNS})",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {DAILY_TABLE}_key ON {DAILY_TABLE} ({_KEY})",
            f"CREATE INDEX IF NOT EXISTS {DAILY_TABLE}_hour ON {DAILY_TABLE} (hour)",
            rollup_trigger_function(
                rollup_insert("new_rows"), rollup_insert("new_rows", DAILY_TABLE, "day")
            ),
            f"DELETE FROM {DAILY_TABLE}",
            f"""
            INSERT INTO {DAILY_TABLE} (hour, {", ".join(ROLLUP_TAGS)},
                {", ".join(name for name, _ in ROLLUP_SUMS)})
            SELECT date_trunc('day', hour, 'UTC'), {", ".join(ROLLUP_TAGS)}, {_DAILY_SUMS}
            FROM {ROLLUP_TABLE} GROUP BY {_DAILY_ORDER} ORDER BY {_DAILY_ORDER}
            """,
        ),
    ),
)
