"""Hourly rollups: kept equal to the raw rows by every writer, read by ``report`` and alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from cache_helpers import scratch_database
from graphthrift import Ledger, LedgerRecord, Store
from graphthrift.ledger.query import rollups_answer
from graphthrift.ledger.schema import (
    DAILY_TABLE,
    ROLLUP_SUMS,
    ROLLUP_TABLE,
    ROLLUP_TAGS,
    rollup_insert,
)
from graphthrift.store import apply_migrations
from graphthrift.store.migrations import MIGRATIONS
from ledger_writers import write_from_processes

REPO = Path(__file__).resolve().parents[1]
_BASE = datetime(2026, 3, 2, 9, tzinfo=UTC)


def _from_rollups(
    conn: Any, tenant: str, table: str = ROLLUP_TABLE
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    cols = ", ".join(name for name, _ in ROLLUP_SUMS)
    rows = conn.execute(
        text(f"SELECT hour, {', '.join(ROLLUP_TAGS)}, {cols} FROM {table} WHERE tenant_id = :t"),
        {"t": tenant},
    )
    return {tuple(r[: len(ROLLUP_TAGS) + 1]): _rounded(r[len(ROLLUP_TAGS) + 1 :]) for r in rows}


def _from_raw(conn: Any, tenant: str, unit: str = "hour") -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The same aggregate computed from raw rows, independently of the trigger."""
    tags = ", ".join(ROLLUP_TAGS)
    aggs = ", ".join(expr for _, expr in ROLLUP_SUMS)
    order = ", ".join(str(i) for i in range(1, len(ROLLUP_TAGS) + 2))
    rows = conn.execute(
        text(
            f"SELECT date_trunc('{unit}', ts, 'UTC'), {tags}, {aggs} FROM graphthrift_ledger"
            f" WHERE tenant_id = :t GROUP BY {order}"
        ),
        {"t": tenant},
    )
    return {tuple(r[: len(ROLLUP_TAGS) + 1]): _rounded(r[len(ROLLUP_TAGS) + 1 :]) for r in rows}


def _rounded(values: Any) -> tuple[Any, ...]:
    return tuple(round(float(v), 9) for v in values)


def _records(tenant: str, worker: int, n: int) -> list[LedgerRecord]:
    kinds = ("llm", "llm", "cache_hit", "route", "refusal")
    return [
        LedgerRecord(
            ts=_BASE + timedelta(minutes=7 * i),
            kind=kinds[i % len(kinds)],
            tenant_id=tenant,
            feature=f"f{i % 3}",
            route="escalated" if i % 4 == 0 else None,
            prompt_version=None if i % 2 else "v1",
            model="gpt-4o-mini",
            thread_id=f"w{worker}-{i}",
            input_tokens=100 + i,
            output_tokens=10 + worker,
            cached_tokens=i % 50,
            success=i % 9 != 0,
            retry=i % 6 == 0,
            attempt=2 if i % 6 == 0 else 1,
            saved_tokens=i % 5,
            latency_ms=float(i),
        )
        for i in range(n)
    ]


def writer_records(tenant: str, worker: int) -> list[LedgerRecord]:
    """What a writer process of ``write_from_processes`` writes: 400 records."""
    return _records(tenant, worker, 400)


def test_rollups_equal_raw_rows_after_concurrent_writer_processes(
    store: Store, tenant: str, tmp_path: Path
) -> None:
    write_from_processes(store, tenant, "test_ledger_rollups:writer_records", 4)
    with store.connect() as conn:
        raw = _from_raw(conn, tenant)
        rolled = _from_rollups(conn, tenant)
        total = conn.execute(
            text(f"SELECT sum(rows) FROM {ROLLUP_TABLE} WHERE tenant_id = :t"), {"t": tenant}
        ).scalar()
        daily = _from_rollups(conn, tenant, DAILY_TABLE)
        raw_daily = _from_raw(conn, tenant, "day")
    assert total == 4 * 400
    assert rolled == raw
    assert daily == raw_daily


def test_spill_replay_counts_each_record_once(store: Store, tmp_path: Path, tenant: str) -> None:
    with scratch_database(store.url) as (url, set_down):
        db_store = Store(url, home=tmp_path)
        ledger = Ledger(db_store, flush_interval=0.05, retry_interval=0.1)
        ledger.record_many(_records(tenant, 0, 30))
        ledger.flush()
        set_down(True)
        ledger.record_many(_records(tenant, 1, 30))
        ledger.close(timeout=0.5)
        assert list(ledger.spill_dir.glob("ledger-*.jsonl"))
        set_down(False)
        replay = Ledger(db_store)
        replay.flush()
        replay.close()
        second = Ledger(db_store)  # nothing left to replay: opening again adds nothing
        second.close()
        with db_store.connect() as conn:
            raw = _from_raw(conn, tenant)
            rolled = _from_rollups(conn, tenant)
            count = conn.execute(
                text("SELECT count(*) FROM graphthrift_ledger WHERE tenant_id = :t"), {"t": tenant}
            ).scalar()
            daily = _from_rollups(conn, tenant, DAILY_TABLE)
            raw_daily = _from_raw(conn, tenant, "day")
        db_store.close()
    assert count == 60
    assert rolled == raw
    assert daily == raw_daily
    assert sum(v[0] for v in rolled.values()) == 60


def test_report_reads_rollups_and_agrees_with_raw_rows(ledger: Ledger, tenant: str) -> None:
    ledger.record_many(_records(tenant, 0, 120))
    ledger.flush()
    since, until = _BASE, _BASE + timedelta(hours=24)
    assert rollups_answer(["feature"], since, until, {"tenant_id": tenant})
    from_rollups = ledger.report(["feature", "day"], since=since, until=until, tenant_id=tenant)
    # a range cut one microsecond off the hour covers the same rows: raw rows for that hour
    cut = since - timedelta(microseconds=1)
    assert not rollups_answer(["feature"], cut, until, {"tenant_id": tenant})
    from_raw = ledger.report(["feature", "day"], since=cut, until=until, tenant_id=tenant)
    assert len(from_rollups) == 3
    assert [r["feature"] for r in from_rollups] == [r["feature"] for r in from_raw]
    for a, b in zip(from_rollups, from_raw, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (pytest.approx(b[key]) if isinstance(b[key], float) else b[key])
    assert sum(r["requests"] for r in from_rollups) == 48  # two llm rows in every five
    assert sum(r["cache_hits"] for r in from_rollups) == 24
    assert sum(r["records"] for r in from_rollups) == 120  # every row, of every kind


def test_report_counts_routing_decisions_by_kind_and_route(ledger: Ledger, tenant: str) -> None:
    """A router's decisions are rows of kind "route" without tokens; ``records`` counts them,
    so the escalation rate is ``report --by kind,route`` (from rollups and from raw rows)."""
    decisions = ["cheap", "escalated", "cheap", "escalated", "cheap"]
    rows = [
        LedgerRecord(tenant_id=tenant, kind="route", route=r, ts=_BASE + timedelta(minutes=i))
        for i, r in enumerate(decisions)
    ]
    rows += [  # the calls: every cheap attempt, and the strong one after each escalation
        LedgerRecord(tenant_id=tenant, model="gpt-4o-mini", route=r, input_tokens=10, ts=_BASE)
        for r in ["cheap"] * 5 + ["escalated"] * 2
    ]
    ledger.record_many(rows)
    ledger.flush()
    since, until = _BASE, _BASE + timedelta(hours=1)
    for start in (since, since - timedelta(microseconds=1)):  # rollups, then raw rows
        got = ledger.report(["kind", "route"], since=start, until=until, tenant_id=tenant)
        by = {(r["kind"], r["route"]): r for r in got}
        assert by[("route", "escalated")]["records"] == 2
        assert by[("route", "cheap")]["records"] == 3
        assert by[("route", "cheap")]["requests"] == 0  # decisions are not calls
        assert by[("llm", "cheap")]["records"] == by[("llm", "cheap")]["requests"] == 5


def test_report_by_thread_reads_raw_rows(ledger: Ledger, tenant: str) -> None:
    assert not rollups_answer(["thread_id"], None, None, {})
    assert not rollups_answer(["feature"], None, None, {"success": True})
    ledger.record_many(_records(tenant, 3, 10))
    ledger.flush()
    rows = ledger.report(["thread_id"], tenant_id=tenant)
    assert sorted(r["thread_id"] for r in rows) == sorted(f"w3-{i}" for i in range(10))


def test_migration_backfills_rollups_from_existing_rows(store: Store, tmp_path: Path) -> None:
    with scratch_database(store.url) as (url, _):
        engine = create_engine(url)
        with engine.begin() as conn:
            assert apply_migrations(conn, MIGRATIONS[:3]) == [1, 2, 3]
            conn.execute(
                text(
                    "INSERT INTO graphthrift_ledger (ts, kind, tenant_id, feature, model,"
                    " input_tokens, cost_usd, success) SELECT"
                    " timestamptz '2026-01-01 00:00Z' + g * interval '13 minutes',"
                    " CASE WHEN g % 3 = 0 THEN 'cache_hit' ELSE 'llm' END, 'old',"
                    " 'f' || (g % 4), 'gpt-4o', g, g * 0.001, g % 7 <> 0"
                    " FROM generate_series(1, 500) AS g"
                )
            )
        engine.dispose()
        migrated = Store(url, home=tmp_path)
        with migrated.connect() as conn:
            raw = _from_raw(conn, "old")
            rolled = _from_rollups(conn, "old")
            daily = _from_rollups(conn, "old", DAILY_TABLE)
            raw_daily = _from_raw(conn, "old", "day")
            # later writes go through the trigger onto the backfilled rows, not beside them
            conn.execute(
                text(
                    "INSERT INTO graphthrift_ledger (ts, kind, tenant_id, feature, model)"
                    " VALUES ('2026-01-01 01:05Z', 'llm', 'old', 'f1', 'gpt-4o')"
                )
            )
            after_raw = _from_raw(conn, "old")
            after_rolled = _from_rollups(conn, "old")
        migrated.close()
    assert sum(v[0] for v in rolled.values()) == 500
    assert rolled == raw
    assert daily == raw_daily and len(daily) < len(rolled)
    assert after_rolled == after_raw
    assert len(after_rolled) == len(rolled)


def test_rollup_sql_names_every_sum_once() -> None:
    sql = rollup_insert("new_rows")
    for name, _ in ROLLUP_SUMS:
        assert f"{name} = h.{name} + EXCLUDED.{name}" in sql


def test_report_cut_mid_hour_adds_raw_edges_to_whole_hours(ledger: Ledger, tenant: str) -> None:
    ledger.record_many(_records(tenant, 4, 200))  # one row every 7 minutes for 23 hours
    ledger.flush()
    since = _BASE + timedelta(hours=2, minutes=20)
    until = _BASE + timedelta(hours=15, minutes=41)
    rows = ledger.report(["feature", "model"], since=since, until=until, tenant_id=tenant)
    inside = [r for r in ledger.records(tenant_id=tenant) if since <= r["ts"] < until]
    assert {r["feature"] for r in rows} == {"f0", "f1", "f2"}
    for row in rows:
        mine = [r for r in inside if r["feature"] == row["feature"]]
        llm = [r for r in mine if r["kind"] == "llm"]
        assert row["requests"] == len(llm)
        assert row["input_tokens"] == sum(r["input_tokens"] for r in llm)
        assert row["cache_hits"] == sum(r["kind"] == "cache_hit" for r in mine)
        assert row["saved_tokens"] == sum(r["saved_tokens"] for r in mine)
        assert row["success_rate"] == pytest.approx(sum(r["success"] for r in llm) / len(llm))
        assert row["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in mine))
    assert [r["cost_usd"] for r in rows] == sorted((r["cost_usd"] for r in rows), reverse=True)


def test_a_missing_tag_and_an_empty_one_are_rolled_up_apart(store: Store, tenant: str) -> None:
    with store.connect() as conn:
        conn.execute(
            text(
                "INSERT INTO graphthrift_ledger (ts, kind, tenant_id, feature) VALUES"
                " ('2026-03-02 10:05Z', 'llm', :t, NULL), ('2026-03-02 10:06Z', 'llm', :t, ''),"
                " ('2026-03-02 10:07Z', 'llm', :t, '')"
            ),
            {"t": tenant},
        )
        rows = conn.execute(
            text(f"SELECT feature, rows FROM {ROLLUP_TABLE} WHERE tenant_id = :t ORDER BY 1"),
            {"t": tenant},
        ).all()
    assert [tuple(r) for r in rows] == [("", 2), (None, 1)]


def test_report_over_whole_days_reads_daily_rollups_and_agrees(ledger: Ledger, tenant: str) -> None:
    ledger.record_many(_records(tenant, 5, 600))  # 70 hours from 09:00: four UTC days
    ledger.flush()
    day = _BASE.replace(hour=0)
    daily = ledger.report(
        ["feature", "day"], since=day, until=day + timedelta(days=5), tenant_id=tenant
    )
    hourly = ledger.report(
        ["feature", "day"],
        since=day + timedelta(hours=1),
        until=day + timedelta(days=5),
        tenant_id=tenant,
    )  # 00:00-01:00 of the first day holds no rows, so the totals are the same
    assert len(daily) == 4 * 3
    assert [(r["feature"], r["day"]) for r in daily] == [(r["feature"], r["day"]) for r in hourly]
    for a, b in zip(daily, hourly, strict=True):
        for key in a:
            assert a[key] == (pytest.approx(b[key]) if isinstance(b[key], float) else b[key])


def test_a_report_filtered_on_a_tag_too_long_for_a_key_finds_it_in_the_rollups(
    ledger: Ledger, tenant: str
) -> None:
    """The rollups key a tag over 128 bytes by its head and md5: a filter on it must be
    keyed the same way (it found nothing there, while raw rows found the calls)."""
    feature = f"{tenant}-" + "é" * 200
    for hour in range(3):
        ledger.record(
            LedgerRecord(
                ts=_BASE + timedelta(hours=hour, minutes=5),
                tenant_id=tenant,
                feature=feature,
                model="gpt-4o-mini",
                cost_usd=0.01,
            )
        )
    ledger.flush()
    since, until = _BASE, _BASE + timedelta(hours=3)
    assert rollups_answer(["tenant_id"], since, until, {"feature": feature})
    [rolled] = ledger.report(["tenant_id"], since=since, until=until, feature=feature)
    [raw] = ledger.report(
        ["tenant_id"], since=since + timedelta(minutes=1), until=until, feature=feature
    )
    assert rolled["requests"] == raw["requests"] == 3
    assert rolled["cost_usd"] == pytest.approx(0.03)
