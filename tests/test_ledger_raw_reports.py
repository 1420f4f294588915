"""Reports that read raw rows (by thread or run id, per task) over a big ledger: bounded to
the last day with a message, and equal to the raw rows of the range they say they read."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from cache_helpers import scratch_database
from graphthrift import Ledger, LedgerRecord, Store
from graphthrift.ledger.query import (
    RAW_REPORT_MAX_ROWS,
    RAW_REPORT_WINDOW,
    bounded_range,
    reads_raw_rows,
)
from graphthrift.ops.tasks import cost_per_task
from ledger_writers import write_from_processes

REPO = Path(__file__).resolve().parents[1]


def recent_records(tenant: str, worker: int, n: int, end: datetime) -> list[LedgerRecord]:
    """``n`` records every 7 minutes back from ``end`` (400 of them span 46 hours), in runs of
    4 calls and threads of 3 runs, so a day's bound cuts threads and runs apart."""
    kinds = ("llm", "llm", "cache_hit", "llm", "refusal")
    return [
        LedgerRecord(
            ts=end - timedelta(minutes=7 * i, seconds=worker),
            kind=kinds[i % len(kinds)],
            tenant_id=tenant,
            feature=f"f{i % 3}",
            model="gpt-4o-mini",
            thread_id=f"t{worker}-{i // 12}",
            run_id=f"r{worker}-{i // 4}",
            input_tokens=100 + i,
            output_tokens=10 + worker,
            cost_usd=(i % 17) / 1000,
            success=i % 9 != 0,
            saved_tokens=i % 5,
        )
        for i in range(n)
    ]


def writer_records(tenant: str, worker: int, end: str) -> list[LedgerRecord]:
    """What a writer process of ``write_from_processes`` writes: 400 recent records."""
    return recent_records(tenant, worker, 400, datetime.fromisoformat(end))


def _raw(conn: Any, key: str, tenant: str, since: datetime | None) -> dict[str, tuple[Any, ...]]:
    """The report's figures computed straight from raw rows, apart from ``report``'s SQL."""
    where = "" if since is None else " AND ts >= :since"
    rows = conn.execute(
        text(
            f"SELECT {key}, count(*) FILTER (WHERE kind = 'llm'),"
            " coalesce(sum(input_tokens) FILTER (WHERE kind = 'llm'), 0),"
            " round(coalesce(sum(cost_usd), 0)::numeric, 9),"
            " count(*) FILTER (WHERE kind = 'cache_hit')"
            f" FROM graphthrift_ledger WHERE tenant_id = :t{where} GROUP BY {key}"
        ),
        {"t": tenant, "since": since},
    )
    return {r[0]: (int(r[1]), int(r[2]), float(r[3]), int(r[4])) for r in rows}


def _reported(rows: list[dict[str, Any]], key: str) -> dict[str, tuple[Any, ...]]:
    return {
        r[key]: (r["requests"], r["input_tokens"], round(r["cost_usd"], 9), r["cache_hits"])
        for r in rows
    }


def test_only_thread_run_and_unrolled_filters_read_raw_rows() -> None:
    assert reads_raw_rows(["thread_id"], {})
    assert reads_raw_rows(["run_id", "tenant_id"], {})
    assert reads_raw_rows(["feature"], {"success": True})
    assert not reads_raw_rows(["tenant_id", "day"], {"feature": "f"})


def test_bounded_report_by_thread_and_run_equals_raw_rows_after_concurrent_writers(
    store: Store, tenant: str
) -> None:
    end = datetime.now(UTC)
    write_from_processes(
        store, tenant, "test_ledger_raw_reports:writer_records", 3, end.isoformat()
    )
    ledger = Ledger(store)
    try:
        for key in ("thread_id", "run_id"):
            bounded = ledger.report([key], max_raw_rows=100, tenant_id=tenant)
            assert bounded.range.bounded is not None
            assert "last 24 hours" in bounded.range.bounded
            assert "since" in bounded.range.bounded
            since = bounded.range.since
            assert since is not None
            assert datetime.now(UTC) - RAW_REPORT_WINDOW - timedelta(minutes=5) < since
            whole = ledger.report([key], max_raw_rows=None, tenant_id=tenant)
            assert whole.range.bounded is None
            with store.connect() as conn:
                raw_bounded = _raw(conn, key, tenant, since)
                raw_whole = _raw(conn, key, tenant, None)
            assert _reported(bounded, key) == raw_bounded
            assert _reported(whole, key) == raw_whole
            assert 0 < len(bounded) < len(whole)
            assert sum(v[0] for v in raw_whole.values()) == 3 * 240  # 3 llm rows in 5
    finally:
        ledger.close()


def test_explicit_since_is_never_bounded(ledger: Ledger, tenant: str) -> None:
    end = datetime.now(UTC)
    ledger.record_many(recent_records(tenant, 0, 400, end))
    ledger.flush()
    since = end - timedelta(hours=40, minutes=13)  # mid-hour, beyond the day's bound
    rows = ledger.report(["thread_id"], since=since, max_raw_rows=1, tenant_id=tenant)
    assert rows.range.bounded is None
    assert rows.range.since == since
    with ledger.store.connect() as conn:
        assert _reported(rows, "thread_id") == _raw(conn, "thread_id", tenant, since)


def test_small_ledger_reads_all_raw_rows(store: Store, tmp_path: Path) -> None:
    old = datetime(2026, 3, 2, 9, tzinfo=UTC)  # long before the last day
    with scratch_database(store.url) as (url, _):
        db = Store(url, home=tmp_path)
        ledger = Ledger(db)
        ledger.record_many(recent_records("small", 0, 50, old))
        ledger.flush()
        rows = ledger.report(["run_id"], max_raw_rows=50)
        over = ledger.report(["run_id"], max_raw_rows=49)
        ledger.close()
        db.close()
    assert rows.range.bounded is None
    assert sum(r["requests"] for r in rows) == 30
    assert over.range.bounded is not None and "holds 50 (more than 49)" in over.range.bounded
    assert over == []  # its last day holds none of them, and it says so


def test_bounded_report_equals_raw_rows_after_spill_replay(
    store: Store, tmp_path: Path, tenant: str
) -> None:
    end = datetime.now(UTC)
    with scratch_database(store.url) as (url, set_down):
        db = Store(url, home=tmp_path)
        ledger = Ledger(db, flush_interval=0.05, retry_interval=0.1)
        ledger.record_many(recent_records(tenant, 0, 200, end))
        ledger.flush()
        set_down(True)
        ledger.record_many(recent_records(tenant, 1, 200, end))
        ledger.close(timeout=0.5)
        assert list(ledger.spill_dir.glob("ledger-*.jsonl"))
        set_down(False)
        replay = Ledger(db)
        replay.flush()
        bounded = replay.report(["run_id"], max_raw_rows=100, tenant_id=tenant)
        threads = replay.report(["thread_id"], max_raw_rows=None, tenant_id=tenant)
        replay.close()
        with db.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM graphthrift_ledger WHERE tenant_id = :t"), {"t": tenant}
            ).scalar()
            raw_runs = _raw(conn, "run_id", tenant, bounded.range.since)
            raw_threads = _raw(conn, "thread_id", tenant, None)
        db.close()
    assert count == 400
    assert bounded.range.bounded is not None
    assert _reported(bounded, "run_id") == raw_runs
    assert _reported(threads, "thread_id") == raw_threads


def test_per_task_counts_the_calls_in_the_range_and_each_task_latest_outcome(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    start = datetime(2026, 4, 6, 10, 30, tzinfo=UTC)
    for run, first_call, cost in (("straddles", -2, 0.25), ("inside", 5, 0.5)):
        for minutes in (first_call, first_call + 3):  # a call on either side of ``start``
            ledger.record(
                LedgerRecord(
                    ts=start + timedelta(minutes=minutes),
                    tenant_id=tenant,
                    run_id=f"{tenant}-{run}",
                    prompt_version="v1",
                    cost_usd=cost,
                )
            )
        ledger.record(
            LedgerRecord(
                ts=start + timedelta(minutes=first_call + 4),
                kind="task",
                tenant_id=tenant,
                run_id=f"{tenant}-{run}",
                success=True,
            )
        )
    ledger.record(  # an outcome written before the range, of a run with a call inside it
        LedgerRecord(
            ts=start - timedelta(hours=1),
            kind="task",
            tenant_id=tenant,
            run_id=f"{tenant}-late",
            success=True,
        )
    )
    ledger.record(
        LedgerRecord(
            ts=start + timedelta(minutes=20),
            tenant_id=tenant,
            run_id=f"{tenant}-late",
            prompt_version="v1",
            cost_usd=1.0,
        )
    )
    ledger.flush()
    (row,) = cost_per_task(store, ["prompt_version"], since=start, tenant_id=tenant)
    assert (row["tasks"], row["successful"], row["unknown"]) == (3, 3, 0)
    # the straddling run's later call only; the late run's outcome counts wherever it lies
    assert row["cost_usd"] == pytest.approx(0.25 + 0.5 * 2 + 1.0)
    assert row["unknown_cost_usd"] == 0
    (everything,) = cost_per_task(store, ["prompt_version"], tenant_id=tenant)
    assert (everything["tasks"], everything["successful"]) == (3, 3)


def test_bounded_range_names_its_range(ledger: Ledger, tenant: str) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    ledger.record_many(recent_records(tenant, 0, 2, until - timedelta(hours=1)))
    ledger.flush()
    with ledger.store.connect() as conn:
        read = bounded_range(conn, "report by run_id", None, until, max_raw_rows=1)
    assert read.until == until
    assert read.since == until - RAW_REPORT_WINDOW
    assert read.bounded is not None
    assert read.since.isoformat() in read.bounded and until.isoformat() in read.bounded
    assert "report by run_id reads raw ledger rows" in read.bounded


@pytest.fixture(scope="module")
def big_ledger(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a database of its own whose ledger holds more rows than a raw report reads
    whole (``RAW_REPORT_MAX_ROWS + 1``, a month old, written by SQL) and 60 recent rows of
    tenant ``new`` (threads ``t0-0``..``t0-4``) with one task outcome; shared by the module's
    CLI tests, which only read it."""
    with scratch_database(store.url) as (url, _):
        db = Store(url, home=tmp_path_factory.mktemp("big-ledger"))
        Ledger(db).close()  # the schema
        with db.connect() as conn:
            conn.execute(
                text(
                    "INSERT INTO graphthrift_ledger (ts, kind, tenant_id, thread_id, run_id,"
                    " cost_usd) SELECT now() - interval '30 days' - g * interval '1 second',"
                    " 'llm', 'old', 'old-' || g % 1000, 'old-run-' || g, 0.001"
                    " FROM generate_series(1, :n) AS g"
                ),
                {"n": RAW_REPORT_MAX_ROWS + 1},
            )
        ledger = Ledger(db)
        ledger.record_many(recent_records("new", 0, 60, datetime.now(UTC)))
        ledger.record(
            LedgerRecord(
                kind="task", tenant_id="new", thread_id="t0-0", run_id="r0-0", success=True
            )
        )
        ledger.close()
        db.close()
        yield url


def test_cli_says_when_thread_and_task_reports_were_bounded(
    big_ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from graphthrift.cli import main

    url = big_ledger
    out = tmp_path / "threads.json"
    assert main(["--url", url, "report", "--by", "thread_id", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    threads = {r["thread_id"] for r in figures["rows"]}
    per = tmp_path / "per.json"
    assert main(["--url", url, "report", "--per", "task", "--json", str(per)]) == 0
    per_printed = capsys.readouterr().out
    per_figures = json.loads(per.read_text())
    (task_row,) = per_figures["rows"]
    whole = main(["--url", url, "report", "--by", "thread_id", "--since", "60d"])
    whole_printed = capsys.readouterr().out
    assert "covers only the last 24 hours" in " ".join(printed.split())
    assert "covers only the last 24 hours" in figures["bounded"]
    assert "covers only the last 24 hours" in per_figures["bounded"]
    assert threads == {f"t0-{i}" for i in range(5)}  # 60 rows, 12 to a thread
    assert "report --per task reads a row per task and hour" in " ".join(per_printed.split())
    assert (task_row["tasks"], task_row["successful"]) == (15, 1)
    assert whole == 0 and "covers only" not in " ".join(whole_printed.split())
    assert "old-999" in whole_printed


_BOUNDED = f"(more than {RAW_REPORT_MAX_ROWS:,}), so it covers only the last 24 hours"


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--by", "thread_id"],
        ["report", "--by", "run_id", "--tenant-id", "new"],
        ["report", "--per", "task"],
        ["report", "--compare", "prompt_version=v1,v2"],
    ],
)
def test_cli_shows_the_bounded_range_once(
    big_ledger: str,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from graphthrift.cli import main

    caplog.set_level(logging.WARNING)
    assert main(["--url", big_ledger, *argv]) == 0
    captured = capsys.readouterr()
    shown = " ".join((captured.out + captured.err + caplog.text).split())
    assert shown.count(_BOUNDED) == 1, shown
    assert "covers only the last 24 hours" in " ".join(captured.out.split())


def test_cli_process_shows_the_bounded_range_once_on_its_terminal(big_ledger: str) -> None:
    """The installed command in a process of its own, where the log goes to stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphthrift.cli",
            "--url",
            big_ledger,
            "report",
            "--by",
            "thread_id",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = " ".join((done.stdout + done.stderr).split())
    assert shown.count(_BOUNDED) == 1, shown
    assert _BOUNDED in " ".join(done.stdout.split())


def test_python_report_logs_the_bounded_range_once(
    big_ledger: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From Python there is no console line: the warning is how the caller learns it."""
    caplog.set_level(logging.WARNING)
    db = Store(big_ledger, home=tmp_path)
    ledger = Ledger(db)
    try:
        rows = ledger.report(["thread_id"])
    finally:
        ledger.close()
        db.close()
    assert rows.range.bounded is not None and _BOUNDED in rows.range.bounded
    warned = [r for r in caplog.records if _BOUNDED in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
