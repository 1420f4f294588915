"""Monthly ledger partitions: the conversion keeps every row, retention drops raw months and
keeps their rollups."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from cache_helpers import scratch_database
from graphthrift import Ledger, LedgerRecord, Store
from graphthrift.errors import ConfigError
from graphthrift.ledger.partitions import maintain_partitions
from graphthrift.ledger.schema import ROLLUP_TABLE
from graphthrift.store import apply_migrations
from graphthrift.store.migrations import MIGRATIONS

# 2,000 rows every 97 minutes from mid-October: they span five months
_ROWS = """
    INSERT INTO graphthrift_ledger (ts, kind, tenant_id, feature, model, input_tokens,
        cost_usd, success)
    SELECT timestamptz '2025-10-15 00:00Z' + g * interval '97 minutes',
        CASE WHEN g % 5 = 0 THEN 'cache_hit' ELSE 'llm' END, 'acme', 'f' || (g % 3),
        'gpt-4o-mini', g, g * 0.0001, g % 11 <> 0
    FROM generate_series(1, 2000) AS g
"""
_FINGERPRINT = (
    "SELECT count(*), md5(string_agg(id || ':' || ts || ':' || input_tokens || ':' ||"
    " coalesce(cost_usd::text, '-'), ',' ORDER BY id)) FROM graphthrift_ledger"
)


def _rollups(conn: Any) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            text(
                f"SELECT hour, kind, feature, rows, input_tokens, round(cost_usd::numeric, 9)"
                f" FROM {ROLLUP_TABLE} ORDER BY 1, 2, 3"
            )
        )
    ]


@pytest.fixture
def converted(store: Store, tmp_path: Path) -> Any:
    """A database written before partitioning (migrations 1-4), then opened by this version."""
    with scratch_database(store.url) as (url, _):
        engine = create_engine(url)
        with engine.begin() as conn:
            apply_migrations(conn, [m for m in MIGRATIONS if m.version <= 4])
            conn.execute(text(_ROWS))
            before = tuple(conn.execute(text(_FINGERPRINT)).one())
            rollups = _rollups(conn)
        engine.dispose()
        migrated = Store(url, home=tmp_path)
        yield migrated, before, rollups
        migrated.close()


def test_conversion_to_monthly_partitions_keeps_every_row(converted: Any) -> None:
    store, before, rollups = converted
    with store.connect() as conn:
        after = tuple(conn.execute(text(_FINGERPRINT)).one())
        kind = conn.execute(
            text("SELECT relkind FROM pg_class WHERE relname = 'graphthrift_ledger'")
        ).scalar()
        months = dict(
            conn.execute(
                text(
                    "SELECT tableoid::regclass::text, count(*) FROM graphthrift_ledger"
                    " GROUP BY 1 ORDER BY 1"
                )
            ).all()
        )
        rollups_after = _rollups(conn)
    assert before[0] == 2000
    assert after == before
    assert kind == "p"
    assert sorted(months) == [
        f"graphthrift_ledger_{m}" for m in ("2025_10", "2025_11", "2025_12", "2026_01", "2026_02")
    ]
    assert sum(months.values()) == 2000
    assert rollups_after == rollups  # moving rows counted nothing twice


def test_retention_drops_raw_months_and_keeps_their_rollups(converted: Any) -> None:
    store, _, rollups = converted
    ledger = Ledger(store)
    by_feature = ledger.report(["feature"])
    done = maintain_partitions(
        store, retention_months=2, ahead_months=0, now=datetime(2026, 2, 10, tzinfo=UTC)
    )
    assert done.dropped == ["graphthrift_ledger_2025_10", "graphthrift_ledger_2025_11"]
    assert done.created == []
    with store.connect() as conn:
        oldest = conn.execute(text("SELECT min(ts) FROM graphthrift_ledger")).scalar()
        assert _rollups(conn) == rollups
    assert oldest >= datetime(2025, 12, 1, tzinfo=UTC)
    assert len(ledger.records(kind="llm")) < 2000
    # the report over all time still answers from the rollups, dropped months included
    assert ledger.report(["feature"]) == by_feature
    ledger.close()


def test_rows_for_a_month_without_a_partition_wait_in_the_default_one(
    converted: Any, tenant: str
) -> None:
    store, _, _ = converted
    ledger = Ledger(store)
    far = datetime(2031, 5, 3, 12, tzinfo=UTC)
    ledger.record_many(LedgerRecord(ts=far, tenant_id=tenant, feature="x") for _ in range(5))
    ledger.flush()
    done = maintain_partitions(store, ahead_months=0, now=far)
    assert done.created == ["graphthrift_ledger_2031_05"]
    with store.connect() as conn:
        where = conn.execute(
            text(
                "SELECT tableoid::regclass::text, count(*) FROM graphthrift_ledger"
                " WHERE tenant_id = :t GROUP BY 1"
            ),
            {"t": tenant},
        ).all()
        counted = conn.execute(
            text(f"SELECT sum(rows) FROM {ROLLUP_TABLE} WHERE tenant_id = :t"), {"t": tenant}
        ).scalar()
    assert where == [("graphthrift_ledger_2031_05", 5)]
    assert counted == 5
    ledger.close()


def test_bad_retention_is_refused(store: Store) -> None:
    with pytest.raises(ConfigError, match="retention_months"):
        maintain_partitions(store, retention_months=0)


def test_ledger_retention_on_open(converted: Any) -> None:
    store, _, rollups = converted
    Ledger(store).close()
    with store.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM graphthrift_ledger")).scalar()
    assert kept == 2000  # no retention: nothing dropped
    Ledger(store, retention_months=1).close()  # today is far past these months
    with store.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM graphthrift_ledger")).scalar()
        assert _rollups(conn) == rollups
    assert left == 0
    with pytest.raises(ConfigError, match="retention_months"):
        Ledger(store, retention_months=-1)
