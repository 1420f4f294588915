"""Per-task rollups: kept equal to raw rows by concurrent writers, backfilled by their
migration, read by cost per task on the hour (raw rows off it, with the same figures), and
dropped with the raw months retention drops."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from cache_helpers import scratch_database
from graphthrift import Ledger, LedgerRecord, Store, diagnostics
from graphthrift.errors import ConfigError
from graphthrift.ledger.partitions import maintain_partitions
from graphthrift.ledger.query import on_the_hour
from graphthrift.ledger.task_compaction import compact_task_rollups
from graphthrift.ledger.task_rollups import (
    TASK_COMPACTED_TABLE,
    TASK_OUTCOME_TABLE,
    TASK_ROLLUP_TABLE,
    TASK_SUMS,
    TASK_TAGS,
)
from graphthrift.ops.tasks import compare, cost_per_task, task_range
from graphthrift.store import apply_migrations
from graphthrift.store.migrations import MIGRATIONS
from ledger_writers import write_from_processes

_BASE = datetime(2026, 3, 2, 9, tzinfo=UTC)
_KEYS = ("run_id", "thread_id", *TASK_TAGS)


def _rounded(values: Any) -> tuple[Any, ...]:
    return tuple(round(float(v), 9) for v in values)


def _from_rollups(conn: Any, tenant: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The rollups summed per key: a key has a row per batch until its hour is merged."""
    keys = ", ".join(_KEYS)
    sums = ", ".join(f"sum({name})" for name, _ in TASK_SUMS)
    rows = conn.execute(
        text(
            f"SELECT hour, {keys}, {sums} FROM {TASK_ROLLUP_TABLE} WHERE tenant_id = :t"
            f" GROUP BY hour, {keys}"
        ),
        {"t": tenant},
    )
    return {tuple(r[: len(_KEYS) + 1]): _rounded(r[len(_KEYS) + 1 :]) for r in rows}


def _from_raw(conn: Any, tenant: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The same sums computed from raw rows in Python, independently of the trigger's SQL."""
    out: dict[tuple[Any, ...], list[float]] = {}
    rows = conn.execute(
        text(
            f"SELECT ts, kind, {', '.join(_KEYS)}, cost_usd, retry, saved_usd,"
            " cache_savings_usd FROM graphthrift_ledger WHERE tenant_id = :t"
            " AND kind <> 'task' AND (run_id IS NOT NULL OR thread_id IS NOT NULL)"
        ),
        {"t": tenant},
    ).mappings()
    for r in rows:
        hour = r["ts"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        sums = out.setdefault((hour, *(r[k] for k in _KEYS)), [0, 0.0, 0.0, 0.0, 0.0, 0.0])
        cost = r["cost_usd"] or 0.0
        sums[0] += 1
        sums[1] += cost if r["kind"] == "llm" else 0.0
        sums[2] += cost if r["kind"] == "llm" and r["retry"] else 0.0
        sums[3] += (r["saved_usd"] or 0.0) if r["kind"] == "cache_hit" else 0.0
        sums[4] += r["cache_savings_usd"] or 0.0
        sums[5] += r["saved_usd"] or 0.0
    return {key: _rounded(v) for key, v in out.items()}


def _latest_outcomes(conn: Any, tenant: str, key: str) -> dict[str, bool]:
    rows = conn.execute(
        text(
            f"SELECT {key}, success FROM graphthrift_ledger WHERE tenant_id = :t"
            f" AND kind = 'task' AND {key} IS NOT NULL ORDER BY ts, id"
        ),
        {"t": tenant},
    ).all()
    return {task: ok for task, ok in rows}  # the last one written wins


def _held_outcomes(conn: Any, tasks: set[str], key: str) -> dict[str, bool]:
    rows = conn.execute(
        text(f"SELECT task, ok FROM {TASK_OUTCOME_TABLE} WHERE task_key = :k"), {"k": key}
    ).all()
    return {task: ok for task, ok in rows if task in tasks}


def _records(tenant: str, worker: int, n: int) -> list[LedgerRecord]:
    """Calls and outcomes of 30 runs (3 to a thread) that every worker writes to."""
    rng = random.Random(worker)
    kinds = ("llm", "llm", "llm", "cache_hit", "route", "task")
    out = []
    for i in range(n):
        run = i % 30
        kind = kinds[rng.randrange(len(kinds))]
        out.append(
            LedgerRecord(
                ts=_BASE + timedelta(minutes=rng.randrange(0, 300), microseconds=worker),
                kind=kind,
                tenant_id=tenant,
                feature=f"f{run % 3}",
                route="escalated" if rng.random() < 0.2 else None,
                prompt_version=f"v{run % 2}",
                model=("gpt-4o", "gpt-4o-mini")[rng.randrange(2)],
                thread_id=f"th-{run // 3}",
                run_id=f"run-{run}",
                cost_usd=None if kind == "task" else round(rng.uniform(0, 0.01), 6),
                saved_usd=round(rng.uniform(0, 0.01), 6) if kind == "cache_hit" else None,
                cache_savings_usd=round(rng.uniform(0, 0.001), 6) if kind == "llm" else None,
                retry=kind == "llm" and rng.random() < 0.2,
                success=rng.random() < 0.7,
            )
        )
    return out


def writer_records(tenant: str, worker: int) -> list[LedgerRecord]:
    """What a writer process of ``write_from_processes`` writes: 300 records."""
    return _records(tenant, worker, 300)


def test_task_rollups_and_outcomes_equal_raw_rows_after_concurrent_writer_processes(
    store: Store, tenant: str
) -> None:
    write_from_processes(store, tenant, "test_ledger_task_rollups:writer_records", 4)
    with store.connect() as conn:
        raw = _from_raw(conn, tenant)
        rolled = _from_rollups(conn, tenant)
        runs = _latest_outcomes(conn, tenant, "run_id")
        threads = _latest_outcomes(conn, tenant, "thread_id")
        held_runs = _held_outcomes(conn, set(runs), "run_id")
        held_threads = _held_outcomes(conn, set(threads), "thread_id")
    assert sum(v[0] for v in raw.values()) > 4 * 200  # most records are calls
    assert rolled == raw
    assert len(runs) == 30 and held_runs == runs
    assert len(threads) == 10 and held_threads == threads


def _cost_per_task_by_hand(records: list[LedgerRecord], task: str) -> dict[str, dict[str, Any]]:
    """Cost per successful task by prompt version, computed in Python from the records."""
    latest: dict[str, tuple[datetime, bool]] = {}
    for r in records:
        key = getattr(r, task)
        done = r.kind == "task" and r.ts is not None and key is not None
        if done and (key not in latest or r.ts >= latest[key][0]):
            latest[key] = (r.ts, r.success)
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.kind == "task" or r.prompt_version is None:
            continue
        row = out.setdefault(r.prompt_version, {"tasks": set(), "ok": set(), "cost": 0.0})
        key = getattr(r, task)
        row["tasks"].add(key)
        if latest.get(key, (None, False))[1]:
            row["ok"].add(key)
        if r.kind == "llm" and key in latest:
            row["cost"] += r.cost_usd or 0.0
    return {
        v: {"tasks": len(d["tasks"]), "successful": len(d["ok"]), "cost_usd": d["cost"]}
        for v, d in out.items()
    }


@pytest.mark.parametrize("task", ["run_id", "thread_id"])
def test_on_the_hour_reads_rollups_off_it_raw_rows_and_both_agree_with_the_records(
    ledger: Ledger, store: Store, tenant: str, task: str
) -> None:
    records = _records(tenant, 0, 400)
    ledger.record_many(records)
    ledger.flush()
    since, until = _BASE, _BASE + timedelta(hours=6)  # every record is inside
    assert on_the_hour(since) and on_the_hour(until)
    raw = cost_per_task(
        store,
        ["prompt_version"],
        task=task,
        since=since - timedelta(seconds=1),  # off the hour: raw rows
        until=until,
        tenant_id=tenant,
    )
    expected = _cost_per_task_by_hand(records, task)
    by_version = {r["prompt_version"]: r for r in raw}
    assert set(by_version) == set(expected) == {"v0", "v1"}
    for version, want in expected.items():
        got = by_version[version]
        assert got["tasks"] == want["tasks"]
        assert got["successful"] == want["successful"]
        assert got["cost_usd"] == pytest.approx(want["cost_usd"])
    mine = cost_per_task(
        store, ["prompt_version"], task=task, since=since, until=until, tenant_id=tenant
    )
    assert mine == [pytest.approx(r) for r in raw]


def test_compare_reads_the_same_tasks_on_and_off_the_hour(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    ledger.record_many(_records(tenant, 1, 400))
    ledger.flush()
    on = compare(store, "prompt_version", ["v0", "v1"], since=_BASE, tenant_id=tenant)
    off = compare(
        store, "prompt_version", ["v0", "v1"], since=_BASE - timedelta(minutes=1), tenant_id=tenant
    )
    assert on["a"]["tasks"] > 0 and on["b"]["tasks"] > 0
    for side in ("a", "b"):
        assert on[side] == pytest.approx(off[side])
    assert (on["delta"], on["ci_low"]) == pytest.approx((off["delta"], off["ci_low"]))


@pytest.mark.parametrize("since", [None, _BASE, _BASE + timedelta(minutes=30)])
def test_an_older_outcome_written_later_does_not_override_a_newer_one(
    ledger: Ledger, store: Store, tenant: str, since: datetime | None
) -> None:
    """A batch replayed late (a spill) carries an outcome older than feedback already held."""
    run = f"run-late-{tenant}"
    call = _BASE + timedelta(minutes=45)  # inside every range tried
    ledger.record(LedgerRecord(tenant_id=tenant, run_id=run, cost_usd=0.01, ts=call))
    ledger.record(
        LedgerRecord(
            kind="task", tenant_id=tenant, run_id=run, success=True, ts=_BASE + timedelta(hours=1)
        )
    )
    ledger.flush()
    ledger.record(LedgerRecord(kind="task", tenant_id=tenant, run_id=run, success=False, ts=_BASE))
    ledger.flush()
    [row] = cost_per_task(
        store, [], since=since, until=_BASE + timedelta(hours=2), tenant_id=tenant
    )
    assert (row["successful"], row["failed"]) == (1, 0)


@pytest.mark.parametrize("after", [None, 0, 90, 150, 3_600])
def test_an_outcome_counts_only_within_the_tenant_it_names(
    ledger: Ledger, store: Store, tenant: str, after: int | None
) -> None:
    """Thread ids such as "support-1" recur across tenants: one tenant's feedback must not
    decide another's task (before, the latest outcome of the id in any tenant won). With
    ``since`` ``after`` seconds past the first outcome, some or all of the outcomes were
    written before the range: the calls (written now) are in it, and each task's latest
    outcome still decides, wherever it lies."""
    since = None if after is None else _BASE + timedelta(seconds=after)
    other, feature, thread = f"{tenant}-b", f"feat-{tenant}", f"support-{tenant}"
    for who, ok, minute in ((tenant, True, 1), (other, False, 2)):
        ledger.record(LedgerRecord(tenant_id=who, feature=feature, thread_id=thread, cost_usd=0.01))
        ledger.record(
            LedgerRecord(
                kind="task",
                tenant_id=who,
                feature=feature,
                thread_id=thread,
                success=ok,
                ts=_BASE + timedelta(minutes=minute),
            )
        )
    ledger.flush()
    rows = cost_per_task(store, ["tenant_id"], task="thread_id", since=since, feature=feature)
    by_tenant = {r["tenant_id"]: (r["successful"], r["failed"]) for r in rows}
    assert by_tenant == {tenant: (1, 0), other: (0, 1)}
    [both] = cost_per_task(store, [], task="thread_id", since=since, feature=feature)
    assert both["tasks"] == 2  # one id, two tenants: two tasks
    # an outcome naming no tenant speaks for the id in every tenant, when it is the latest
    ledger.record(
        LedgerRecord(kind="task", thread_id=thread, success=False, ts=_BASE + timedelta(minutes=3))
    )
    ledger.flush()
    rows = cost_per_task(store, ["tenant_id"], task="thread_id", since=since, feature=feature)
    assert {r["tenant_id"]: r["failed"] for r in rows} == {tenant: 1, other: 1}
    cmp = compare(
        store, "tenant_id", [tenant, other], task="thread_id", since=since, feature=feature
    )
    assert cmp["a"]["tasks"] == 1 and cmp["a"]["successful"] == 0


def test_a_task_id_too_long_for_a_key_is_one_task_on_both_reads(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    """Ids and tags over 128 bytes are keyed by their head and md5: a filter on such a tag
    (here the tenant) must find them on the rollups as on raw rows."""
    run = f"run-{tenant}-" + "x" * 5_000
    tenant = f"{tenant}-" + "é" * 200
    for cost in (0.01, 0.02):
        ledger.record(LedgerRecord(tenant_id=tenant, run_id=run, cost_usd=cost, ts=_BASE))
    ledger.record(LedgerRecord(kind="task", tenant_id=tenant, run_id=run, success=True, ts=_BASE))
    ledger.flush()
    for since in (None, _BASE, _BASE - timedelta(seconds=1)):
        [row] = cost_per_task(store, [], since=since, tenant_id=tenant)
        assert (row["tasks"], row["successful"]) == (1, 1)
        assert row["cost_per_successful_task"] == pytest.approx(0.03)


def test_task_range_bounds_a_big_ledger_to_whole_hours(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    ledger.record(LedgerRecord(tenant_id=tenant, run_id="r", cost_usd=0.01))
    ledger.flush()
    now = datetime(2026, 3, 2, 10, 17, 5, tzinfo=UTC)
    with store.connect() as conn:
        read = task_range(conn, "report --per task", None, None, now=now, max_raw_rows=0)
        on_hour = task_range(
            conn,
            "report --per task",
            None,
            None,
            now=now.replace(minute=0, second=0),
            max_raw_rows=0,
        )
        small = task_range(conn, "report --per task", None, None, now=now)
    assert read.bounded is not None and "24 hours" in read.bounded
    assert read.since == datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert read.until is None
    assert on_hour.since == datetime(2026, 3, 1, 10, tzinfo=UTC)  # no hour is lost
    assert (small.since, small.bounded) == (None, None)  # a small ledger is read whole


_OLD_ROWS = """
    INSERT INTO graphthrift_ledger (ts, kind, tenant_id, prompt_version, model, run_id,
        thread_id, cost_usd, success, retry)
    SELECT timestamptz '2026-01-01 00:00Z' + g * interval '7 minutes',
        CASE WHEN g % 5 = 4 THEN 'task' WHEN g % 5 = 3 THEN 'cache_hit' ELSE 'llm' END,
        'old', 'v' || (g / 5) % 2, 'gpt-4o', 'run-' || g / 5, 'th-' || g / 15,
        CASE WHEN g % 5 = 4 THEN NULL ELSE g * 0.001 END, g % 3 <> 0, g % 11 = 0
    FROM generate_series(0, 599) AS g
"""


@contextmanager
def _migrated(store: Store, tmp_path: Path, rows: str) -> Iterator[Store]:
    """A database of its own written before migration 7 (``rows``, SQL), then opened by
    this version: the per-task rollups are built from what it held."""
    with scratch_database(store.url) as (url, _):
        engine = create_engine(url)
        with engine.begin() as conn:
            apply_migrations(conn, [m for m in MIGRATIONS if m.version < 7])
            conn.execute(text(rows))
        engine.dispose()
        migrated = Store(url, home=tmp_path)
        try:
            yield migrated
        finally:
            migrated.close()


def test_migration_backfills_task_rollups_and_outcomes_from_existing_rows(
    store: Store, tmp_path: Path
) -> None:
    with _migrated(store, tmp_path, _OLD_ROWS) as migrated:
        with migrated.connect() as conn:
            raw = _from_raw(conn, "old")
            rolled = _from_rollups(conn, "old")
            runs = _latest_outcomes(conn, "old", "run_id")
            held = _held_outcomes(conn, set(runs), "run_id")
        rows = cost_per_task(migrated, ["prompt_version"], tenant_id="old")
        # later writes sum with the backfilled rows (appended beside them since migration 8)
        ledger = Ledger(migrated)
        ledger.record(
            LedgerRecord(
                tenant_id="old",
                prompt_version="v0",
                model="gpt-4o",
                run_id="run-0",
                thread_id="th-0",
                cost_usd=1.0,
                ts=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
            )
        )
        ledger.flush()
        with migrated.connect() as conn:
            after_raw = _from_raw(conn, "old")
            after_rolled = _from_rollups(conn, "old")
        ledger.close()
    assert len(runs) == 120 and held == runs
    assert rolled == raw and len(rolled) > 100
    assert sum(r["tasks"] for r in rows) == 120
    assert after_rolled == after_raw and len(after_rolled) == len(rolled)


def test_retention_drops_the_task_rollups_of_the_months_it_drops(
    store: Store, tmp_path: Path
) -> None:
    january_to_march = _OLD_ROWS.replace("7 minutes", "3 hours")
    with _migrated(store, tmp_path, january_to_march) as migrated:
        before = cost_per_task(migrated, [], tenant_id="old")
        maintain_partitions(
            migrated, retention_months=1, ahead_months=0, now=datetime(2026, 3, 5, tzinfo=UTC)
        )
        after = cost_per_task(migrated, [], tenant_id="old")
        with migrated.connect() as conn:
            oldest = conn.execute(text(f"SELECT min(hour) FROM {TASK_ROLLUP_TABLE}")).scalar()
            oldest_outcome = conn.execute(
                text(f"SELECT min(ts) FROM {TASK_OUTCOME_TABLE}")
            ).scalar()
            kept = conn.execute(
                text(
                    "SELECT count(DISTINCT run_id) FROM graphthrift_ledger"
                    " WHERE kind <> 'task' AND tenant_id = 'old'"
                )
            ).scalar()
    cutoff = datetime(2026, 2, 1, tzinfo=UTC)
    assert oldest >= cutoff and oldest_outcome >= cutoff
    assert before[0]["tasks"] == 120
    assert after[0]["tasks"] == kept < 120


@pytest.mark.parametrize("after", [None, 0, 30, 90, 3_600])
def test_a_tenant_outcome_newer_than_an_untenanted_one_decides_that_tenant_only(
    ledger: Ledger, store: Store, tenant: str, after: int | None
) -> None:
    since = None if after is None else _BASE + timedelta(seconds=after)
    other, feature, run = f"{tenant}-b", f"feat-{tenant}", f"run-{tenant}"
    for who in (tenant, other):
        ledger.record(LedgerRecord(tenant_id=who, feature=feature, run_id=run, cost_usd=0.01))
    ledger.record(
        LedgerRecord(kind="task", run_id=run, success=False, ts=_BASE + timedelta(minutes=1))
    )
    ledger.record(
        LedgerRecord(
            kind="task", tenant_id=tenant, run_id=run, success=True, ts=_BASE + timedelta(minutes=2)
        )
    )
    ledger.flush()
    rows = cost_per_task(store, ["tenant_id"], since=since, feature=feature)
    assert {r["tenant_id"]: (r["successful"], r["failed"]) for r in rows} == {
        tenant: (1, 0),
        other: (0, 1),
    }


@pytest.mark.parametrize("since", [None, _BASE, _BASE + timedelta(seconds=1)])
def test_calls_that_name_no_tenant_take_their_id_outcome_from_any_tenant(
    ledger: Ledger, store: Store, tenant: str, since: datetime | None
) -> None:
    """A tracker given a tenant beside calls that were not: the run is not left unknown."""
    run, feature = f"run-{tenant}", f"feat-{tenant}"
    ledger.record(
        LedgerRecord(feature=feature, run_id=run, cost_usd=0.02, ts=_BASE + timedelta(minutes=5))
    )
    ledger.record(
        LedgerRecord(
            kind="task", tenant_id=tenant, run_id=run, success=True, ts=_BASE + timedelta(minutes=6)
        )
    )
    ledger.flush()
    [row] = cost_per_task(store, [], since=since, feature=feature)
    assert (row["tasks"], row["successful"], row["unknown"]) == (1, 1, 0)
    assert row["cost_per_successful_task"] == pytest.approx(0.02)


def test_compare_refuses_a_filter_on_the_dimension_it_compares(store: Store) -> None:
    with pytest.raises(ValueError, match="compare by prompt_version takes its two values"):
        compare(store, "prompt_version", ["v0", "v1"], prompt_version="v0")


# -- appended rows, merged once their hour closes (migration 8) ----------------------------


@contextmanager
def _scratch(store: Store, tmp_path: Path) -> Iterator[Store]:
    """A database of its own, so that no other test has merged (and marked) its hours."""
    with scratch_database(store.url) as (url, _):
        scratch = Store(url, home=tmp_path)
        try:
            yield scratch
        finally:
            scratch.close()


def _rounded_row(row: dict[str, Any]) -> dict[str, Any]:
    """A report row with its sums rounded: merging adds the same numbers in another order."""
    return {k: round(v, 9) if isinstance(v, float) else v for k, v in row.items()}


def _row_counts(conn: Any) -> tuple[int, int]:
    """Rows held, and the distinct keys they hold."""
    keys = ", ".join(f"coalesce({k}, '-')" for k in ("hour::text", *_KEYS))
    return tuple(  # type: ignore[return-value]
        conn.execute(
            text(f"SELECT count(*), count(DISTINCT ({keys})) FROM {TASK_ROLLUP_TABLE}")
        ).one()
    )


def test_merging_closed_hours_leaves_one_row_per_key_and_the_same_figures(
    store: Store, tmp_path: Path, tenant: str
) -> None:
    with _scratch(store, tmp_path) as db:
        ledger = Ledger(db, batch_size=23, flush_interval=0.01)
        ledger.record_many(_records(tenant, 0, 400))
        ledger.close()
        with db.connect() as conn:
            appended, keys = _row_counts(conn)
        before = cost_per_task(db, ["prompt_version"], tenant_id=tenant)
        removed = compact_task_rollups(db, now=_BASE + timedelta(hours=6))
        again = compact_task_rollups(db, now=_BASE + timedelta(hours=6))
        with db.connect() as conn:
            merged, merged_keys = _row_counts(conn)
            marked = conn.execute(text(f"SELECT count(*) FROM {TASK_COMPACTED_TABLE}")).scalar()
        after = cost_per_task(db, ["prompt_version"], tenant_id=tenant)
        # a late batch into a merged hour stays beside the merged row, and still counts
        late = Ledger(db)
        late.record(
            LedgerRecord(
                tenant_id=tenant,
                run_id="run-1",
                thread_id="th-0",
                prompt_version="v1",
                feature="f1",
                model="gpt-4o",
                cost_usd=0.5,
                ts=_BASE,
            )
        )
        late.close()
        with db.connect() as conn:
            late_rows, _ = _row_counts(conn)
            assert _from_rollups(conn, tenant) == _from_raw(conn, tenant)
    assert appended > keys  # a key's calls in several batches are appended, not upserted
    assert removed == appended - keys and merged == merged_keys == keys
    assert again == 0 and marked == 5  # the five hours written, each merged once
    assert [_rounded_row(r) for r in after] == [_rounded_row(r) for r in before]
    assert late_rows == merged + 1


def test_merging_while_writers_write_loses_and_counts_nothing_twice(
    store: Store, tmp_path: Path, tenant: str
) -> None:
    with _scratch(store, tmp_path) as db:
        done = threading.Event()
        merges: list[int] = []

        def merge_again_and_again() -> None:
            while not done.is_set():
                with db.connect() as conn:
                    conn.execute(text(f"DELETE FROM {TASK_COMPACTED_TABLE}"))
                merges.append(compact_task_rollups(db, now=_BASE + timedelta(hours=6)))

        merger = threading.Thread(target=merge_again_and_again)
        merger.start()
        try:
            write_from_processes(db, tenant, "test_ledger_task_rollups:writer_records", 4)
        finally:
            done.set()
            merger.join()
        with db.connect() as conn:
            raw = _from_raw(conn, tenant)
            rolled = _from_rollups(conn, tenant)
    assert len(merges) > 1 and sum(merges) > 0
    assert rolled == raw and sum(v[0] for v in raw.values()) > 4 * 200


def test_a_writer_merges_the_hours_that_closed_once_an_hour(
    store: Store, tmp_path: Path, tenant: str
) -> None:
    earlier = datetime.now(UTC).replace(minute=10, second=0) - timedelta(hours=2)
    with _scratch(store, tmp_path) as db:
        with db.connect() as conn:  # as if a writer had merged up to now: nothing merges yet
            conn.execute(
                text(
                    f"INSERT INTO {TASK_COMPACTED_TABLE} SELECT generate_series("
                    " date_trunc('hour', now(), 'UTC') - interval '24 hours',"
                    " date_trunc('hour', now(), 'UTC') - interval '1 hour', interval '1 hour')"
                )
            )
        first = Ledger(db, batch_size=1, flush_interval=0.01)
        for i in range(6):
            first.record(
                LedgerRecord(
                    tenant_id=tenant,
                    run_id="run-a",
                    cost_usd=0.01,
                    ts=earlier + timedelta(seconds=i),
                )
            )
            first.flush()
        first.close()
        with db.connect() as conn:
            appended, _ = _row_counts(conn)
            conn.execute(text(f"DELETE FROM {TASK_COMPACTED_TABLE}"))
        second = Ledger(db)
        second.record(LedgerRecord(tenant_id=tenant, run_id="run-b", cost_usd=0.01))
        second.close()
        with db.connect() as conn:
            merged, keys = _row_counts(conn)
            spend = _from_rollups(conn, tenant)
    assert appended == 6 and merged == keys == 2  # run-a in six batches; then run-b
    assert sorted(round(v[1], 6) for v in spend.values()) == [0.01, 0.06]


def test_migration_8_appends_beside_rows_upserted_before_it(store: Store, tmp_path: Path) -> None:
    with scratch_database(store.url) as (url, _):
        engine = create_engine(url)
        with engine.begin() as conn:
            apply_migrations(conn, [m for m in MIGRATIONS if m.version < 8])
            conn.execute(text(_OLD_ROWS))
            conn.execute(text(_OLD_ROWS))  # upserted onto the same keys
        engine.dispose()
        migrated = Store(url, home=tmp_path)
        try:
            with migrated.connect() as conn:
                upserted, upserted_keys = _row_counts(conn)
                hours, marked = conn.execute(
                    text(
                        f"SELECT (SELECT count(DISTINCT hour) FROM {TASK_ROLLUP_TABLE}),"
                        f" (SELECT count(*) FROM {TASK_COMPACTED_TABLE})"
                    )
                ).one()
                conn.execute(text(_OLD_ROWS))  # appended beside them from now on
                appended, keys = _row_counts(conn)
                index = conn.execute(
                    text("SELECT to_regclass(:i)"), {"i": f"{TASK_ROLLUP_TABLE}_key"}
                ).scalar()
                assert _from_rollups(conn, "old") == _from_raw(conn, "old")
        finally:
            migrated.close()
    assert upserted == upserted_keys == keys and appended == 2 * keys
    assert index is None
    assert marked == hours > 1  # hours upserted before hold a row per key: none to merge


def test_a_failed_merge_is_counted_and_the_ledger_writes_on(
    store: Store, tmp_path: Path, tenant: str
) -> None:
    with _scratch(store, tmp_path) as db:
        with db.connect() as conn:  # the merge fails for want of its marker table
            conn.execute(text(f"DROP TABLE {TASK_COMPACTED_TABLE}"))
        failures = diagnostics.get("ledger_compaction_failure")
        ledger = Ledger(db)
        ledger.record(LedgerRecord(tenant_id=tenant, run_id="run-a", cost_usd=0.01))
        ledger.close()
        with db.connect() as conn:
            written = conn.execute(
                text("SELECT count(*) FROM graphthrift_ledger WHERE tenant_id = :t"),
                {"t": tenant},
            ).scalar()
    assert diagnostics.get("ledger_compaction_failure") == failures + 1
    assert written == 1


@pytest.mark.parametrize("hours", [0, -1, 1.5, True])
def test_merging_refuses_a_window_that_is_not_whole_hours(store: Store, hours: Any) -> None:
    with pytest.raises(ConfigError, match="hours"):
        compact_task_rollups(store, hours=hours)
