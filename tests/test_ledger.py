"""The ledger: batched, durable on flush, concurrent, fail-open, and nothing lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cache_helpers import scratch_database
from graphthrift import Ledger, LedgerRecord, Store, diagnostics
from graphthrift.ledger import LedgerFlushTimeout


def test_flush_makes_records_durable(ledger: Ledger, store: Store, tenant: str) -> None:
    ledger.record(
        LedgerRecord(
            tenant_id=tenant,
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=200,
            cached_tokens=400,
        )
    )
    ledger.flush()
    engine = create_engine(store.url)  # a connection the ledger never used
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT input_tokens, cached_tokens, cost_usd FROM graphthrift_ledger WHERE tenant_id = :t"
            ),
            {"t": tenant},
        ).one()
    engine.dispose()
    assert row[0] == 1000 and row[1] == 400
    from graphthrift.ledger import cost_usd

    assert row[2] == pytest.approx(cost_usd("gpt-4o-mini", 1000, 200, 400))


def test_eight_threads_and_eight_tasks_lose_nothing(ledger: Ledger, tenant: str) -> None:
    per_writer = 625  # 16 writers x 625 = 10,000 records

    def thread_writer(w: int) -> None:
        for i in range(per_writer):
            ledger.record(
                LedgerRecord(
                    tenant_id=tenant,
                    call_id=f"th{w}-{i}",
                    model="gpt-4o",
                    input_tokens=i,
                    output_tokens=1,
                )
            )

    async def task_writer(w: int) -> None:
        for i in range(per_writer):
            ledger.record(
                LedgerRecord(
                    tenant_id=tenant,
                    call_id=f"as{w}-{i}",
                    model="gpt-4o",
                    input_tokens=i,
                    output_tokens=1,
                )
            )
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def tasks() -> None:
        await asyncio.gather(*(task_writer(w) for w in range(8)))

    threads = [threading.Thread(target=thread_writer, args=(w,)) for w in range(8)]
    threads.append(threading.Thread(target=lambda: asyncio.run(tasks())))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert len(rows) == 10_000
    assert len({r["call_id"] for r in rows}) == 10_000
    assert sum(r["input_tokens"] for r in rows) == 16 * sum(range(per_writer))


def test_report_groups_and_filters(ledger: Ledger, tenant: str) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    ledger.record_many(
        [
            LedgerRecord(
                tenant_id=tenant,
                feature="faq",
                node="agent",
                model="gpt-4o-mini",
                input_tokens=1000,
                output_tokens=100,
            ),
            LedgerRecord(
                tenant_id=tenant,
                feature="faq",
                node="agent",
                model="gpt-4o-mini",
                input_tokens=1000,
                output_tokens=100,
                success=False,
                error_type="timeout",
                cost_usd=0.0,
            ),
            LedgerRecord(
                tenant_id=tenant,
                feature="rag",
                node="answer",
                model="gpt-4o",
                input_tokens=2000,
                output_tokens=300,
                ts=yesterday,
            ),
            LedgerRecord(
                kind="cache_hit",
                tenant_id=tenant,
                feature="faq",
                node="agent",
                model="gpt-4o",
                input_tokens=2000,
                output_tokens=300,
                layer="exact",
                cost_usd=0.0,
            ),
        ]
    )
    ledger.flush()
    by_feature = {r["feature"]: r for r in ledger.report(["feature"], tenant_id=tenant)}
    assert by_feature["faq"]["requests"] == 2
    assert by_feature["faq"]["success_rate"] == pytest.approx(0.5)
    assert by_feature["faq"]["cache_hits"] == 1
    assert by_feature["faq"]["saved_usd"] > 0
    assert by_feature["rag"]["input_tokens"] == 2000
    assert by_feature["rag"]["cost_usd"] > by_feature["faq"]["cost_usd"]
    days = ledger.report(["day"], tenant_id=tenant)
    assert len(days) == 2 and all(isinstance(d["day"], str) for d in days)
    recent = ledger.report(["node"], tenant_id=tenant, since=datetime.now(UTC) - timedelta(hours=1))
    assert {r["node"] for r in recent} == {"agent"}
    with pytest.raises(ValueError, match="cannot report by"):
        ledger.report(["colour"])
    with pytest.raises(ValueError, match="cannot filter"):
        ledger.records(colour="red")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_tokens": -5}, ValueError, "input_tokens must be >= 0"),
        ({"output_tokens": 10**12}, ValueError, "plausible"),
        ({"cached_tokens": 1.5}, TypeError, "cached_tokens must be an int"),
        ({"cost_usd": float("inf")}, ValueError, "cost_usd"),
        ({"error_type": "meltdown"}, ValueError, "error_type"),
        ({"ts": datetime(2026, 1, 1)}, ValueError, "timezone"),
        ({"kind": ""}, ValueError, "kind"),
    ],
)
def test_bad_records_are_refused_with_the_field_named(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LedgerRecord(**kwargs)  # type: ignore[arg-type]


def test_unknown_model_is_recorded_with_no_cost(ledger: Ledger, tenant: str) -> None:
    before = diagnostics.get("unknown_model_price")
    ledger.record(
        LedgerRecord(tenant_id=tenant, model="in-house-llm-v9", input_tokens=10, output_tokens=5)
    )
    ledger.record(
        LedgerRecord(tenant_id=tenant, model="gpt-4o-mini", input_tokens=10, output_tokens=5)
    )
    ledger.flush()
    costs = {r["model"]: r["cost_usd"] for r in ledger.records(tenant_id=tenant)}
    assert costs["in-house-llm-v9"] is None and costs["gpt-4o-mini"] > 0
    assert diagnostics.get("unknown_model_price") > before
    (row,) = ledger.report(["tenant_id"], tenant_id=tenant)
    assert row["unpriced"] == 1


def test_deferred_builder_failure_loses_no_other_record(ledger: Ledger, tenant: str) -> None:
    before = diagnostics.get("ledger_build_failure")
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="a"))
    ledger.record_deferred(lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    ledger.record_deferred(lambda: LedgerRecord(tenant_id=tenant, call_id="b"))
    ledger.flush()
    assert sorted(r["call_id"] for r in ledger.records(tenant_id=tenant)) == ["a", "b"]
    assert diagnostics.get("ledger_build_failure") == before + 1


@pytest.fixture
def outage_db(store: Store) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A database that a test can take away and bring back (by renaming it)."""
    with scratch_database(store.url) as db:
        yield db


def test_database_outage_keeps_records_queued_until_it_returns(
    outage_db: tuple[str, callable], tmp_path: Path
) -> None:  # type: ignore[valid-type]
    url, set_down = outage_db
    db_store = Store(url, home=tmp_path)
    ledger = Ledger(db_store, flush_interval=0.05, retry_interval=0.1)
    ledger.record(LedgerRecord(tenant_id="before"))
    ledger.flush()
    set_down(True)
    failures = diagnostics.get("ledger_write_failure")
    for i in range(50):
        ledger.record(LedgerRecord(tenant_id="during", call_id=str(i)))  # never raises
    with pytest.raises(LedgerFlushTimeout) as info:
        ledger.flush(timeout=1.0)
    assert info.value.pending == 50
    assert diagnostics.get("ledger_write_failure") > failures
    set_down(False)
    ledger.flush(timeout=30)
    assert len(ledger.records(tenant_id="during")) == 50
    ledger.close()
    db_store.close()


def test_records_unwritable_at_close_are_spilled_and_replayed(
    outage_db: tuple[str, callable], tmp_path: Path
) -> None:  # type: ignore[valid-type]
    url, set_down = outage_db
    db_store = Store(url, home=tmp_path)
    ledger = Ledger(db_store, flush_interval=0.05, retry_interval=0.1)
    set_down(True)
    ledger.record_many(
        LedgerRecord(tenant_id="spilled", call_id=str(i), model="gpt-4o-mini", input_tokens=i)
        for i in range(20)
    )
    ledger.close(timeout=0.5)
    spilled = list(ledger.spill_dir.glob("ledger-*.jsonl"))
    assert len(spilled) == 1
    set_down(False)
    replay = Ledger(db_store)
    replay.flush()
    rows = replay.records(tenant_id="spilled")
    assert sorted(int(r["call_id"]) for r in rows) == list(range(20))
    assert not list(replay.spill_dir.iterdir())
    replay.close()
    db_store.close()


def test_closed_ledger_refuses_records(store: Store) -> None:
    led = Ledger(store)
    led.close()
    with pytest.raises(RuntimeError, match="closed"):
        led.record(LedgerRecord())
    with pytest.raises(TypeError, match="LedgerRecord"):
        Ledger(store).record({"kind": "llm"})  # type: ignore[arg-type]


def test_listeners_see_committed_priced_records_and_may_fail(ledger: Ledger, tenant: str) -> None:
    seen: list[LedgerRecord] = []
    ledger.add_listener(seen.extend)
    ledger.add_listener(lambda records: 1 / 0)
    before = diagnostics.get("ledger_listener_failure")
    ledger.record(
        LedgerRecord(tenant_id=tenant, model="gpt-4o-mini", input_tokens=100, output_tokens=10)
    )
    ledger.flush()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.tenant_id for r in seen] == [tenant]
    assert seen[0].cost_usd is not None and seen[0].cost_usd > 0
    assert diagnostics.get("ledger_listener_failure") == before + 1
    ledger.remove_listener(seen.extend)
