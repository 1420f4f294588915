"""The ledger under bad records and crashes: nothing poisons it, nothing already recorded is lost."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cache_helpers import scratch_database
from graphthrift import Ledger, LedgerRecord, Store, diagnostics
from graphthrift.ledger import LedgerFlushTimeout


@pytest.fixture
def outage(store: Store, tmp_path: Path) -> Iterator[tuple[Store, Callable[[bool], None]]]:
    """A store on a database of its own that the test can take away and bring back."""
    with scratch_database(store.url) as (url, set_down):
        db_store = Store(url, home=tmp_path)
        yield db_store, set_down
        db_store.close()


def test_nul_and_surrogates_in_tags_are_repaired_and_the_batch_is_written(
    ledger: Ledger, tenant: str
) -> None:
    before = diagnostics.get("text_repaired")
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="before"))
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="nul", feature="chat\x00bot"))
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="surrogate", model="gpt-4o-mini\udce9"))
    ledger.record(
        LedgerRecord(tenant_id=tenant, call_id="extra", extra={"q\x00": "a\ud800b", "n": 1})
    )
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="after"))
    ledger.flush(timeout=20)
    rows = {r["call_id"]: r for r in ledger.records(tenant_id=tenant)}
    assert set(rows) == {"before", "nul", "surrogate", "extra", "after"}
    assert rows["nul"]["feature"] == "chatbot"
    assert rows["surrogate"]["model"] == "gpt-4o-mini\ufffd"
    assert rows["extra"]["extra"] == {"q": "a\ufffdb", "n": 1}
    assert diagnostics.get("text_repaired") >= before + 3


def test_a_record_changed_after_construction_is_repaired_before_writing(
    ledger: Ledger, tenant: str
) -> None:
    record = LedgerRecord(tenant_id=tenant, call_id="late")
    record.node = "node\x00"  # the dataclass is mutable; the writer must not trust it
    ledger.record(record)
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="other"))
    ledger.flush(timeout=20)
    rows = {r["call_id"]: r["node"] for r in ledger.records(tenant_id=tenant)}
    assert rows == {"late": "node", "other": None}


def test_a_record_the_database_refuses_is_quarantined_alone(ledger: Ledger, tenant: str) -> None:
    before = diagnostics.get("ledger_quarantined")
    records = [LedgerRecord(tenant_id=tenant, call_id=str(i)) for i in range(9)]
    records[4].attempt = 2**40  # past the integer column: PostgreSQL refuses the whole COPY
    ledger.record_many(records)
    ledger.flush(timeout=20)
    written = sorted(int(r["call_id"]) for r in ledger.records(tenant_id=tenant))
    assert written == [0, 1, 2, 3, 5, 6, 7, 8]
    assert diagnostics.get("ledger_quarantined") == before + 1
    kept = [
        json.loads(line)
        for path in ledger.quarantine_dir.glob("ledger-*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    mine = [k for k in kept if k["record"]["tenant_id"] == tenant]
    assert [k["record"]["call_id"] for k in mine] == ["4"]
    assert "out of range" in mine[0]["error"]


def test_an_extra_json_cannot_hold_neither_aborts_a_spill_nor_is_lost(
    outage: tuple[Store, Callable[[bool], None]],
) -> None:
    db_store, set_down = outage
    ledger = Ledger(db_store, flush_interval=0.05, retry_interval=0.1)
    set_down(True)
    for i in range(21):
        extra = {"i": i}
        if i == 10:
            extra = {"when": datetime(2026, 1, 1, tzinfo=UTC), "price": Decimal("1.5"), "s": {1}}
        ledger.record(LedgerRecord(tenant_id="spill", call_id=str(i), extra=extra))
    ledger.close(timeout=0.5)
    lines = [
        line
        for path in ledger.spill_dir.glob("ledger-*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert len(lines) == 21
    set_down(False)
    replay = Ledger(db_store)
    replay.flush(timeout=20)
    rows = {r["call_id"]: r["extra"] for r in replay.records(tenant_id="spill")}
    replay.close()
    assert sorted(rows, key=int) == [str(i) for i in range(21)]
    assert rows["10"] == {"when": "2026-01-01 00:00:00+00:00", "price": "1.5", "s": [1]}


def _spill_line(call_id: str, tenant: str = "replayed") -> str:
    record = LedgerRecord(tenant_id=tenant, call_id=call_id)
    row = record.as_row()
    row["ts"] = record.ts.isoformat()
    return json.dumps(row)


def test_a_replaying_file_left_by_a_crash_is_replayed(ledger: Ledger, store: Store) -> None:
    spill_dir = ledger.spill_dir
    spill_dir.mkdir(parents=True, exist_ok=True)
    tenant = f"crashed-{os.getpid()}-{id(ledger)}"
    orphan = spill_dir / "ledger-1-1-1.replaying"  # as a crash in the middle of a replay leaves it
    orphan.write_text("".join(_spill_line(str(i), tenant) + "\n" for i in range(3)))
    replay = Ledger(store)
    replay.flush(timeout=20)
    assert sorted(r["call_id"] for r in replay.records(tenant_id=tenant)) == ["0", "1", "2"]
    assert not orphan.exists()
    replay.close()


def test_a_torn_last_line_is_quarantined_and_the_rest_replayed(
    ledger: Ledger, store: Store
) -> None:
    tenant = f"torn-{os.getpid()}-{id(ledger)}"
    spill_dir = ledger.spill_dir
    spill_dir.mkdir(parents=True, exist_ok=True)
    torn = _spill_line("2", tenant)[:37]
    poisoned = json.loads(_spill_line("3", tenant))
    poisoned["input_tokens"] = -5
    path = spill_dir / "ledger-2-2-2.jsonl"
    path.write_text(
        _spill_line("0", tenant)
        + "\n"
        + _spill_line("1", tenant)
        + "\n"
        + json.dumps(poisoned)
        + "\n"
        + torn
    )
    before = diagnostics.get("ledger_spill_bad_line")
    replay = Ledger(store)  # must not raise JSONDecodeError
    replay.flush(timeout=20)
    assert sorted(r["call_id"] for r in replay.records(tenant_id=tenant)) == ["0", "1"]
    assert diagnostics.get("ledger_spill_bad_line") == before + 1
    kept = "".join(p.read_text() for p in replay.quarantine_dir.glob("ledger-2-2-2*"))
    assert torn in kept and '"input_tokens": -5' in kept
    assert not path.exists() and not path.with_suffix(".replaying").exists()
    replay.close()


def test_the_queue_is_capped_in_bytes_and_the_overflow_comes_back(
    outage: tuple[Store, Callable[[bool], None]],
) -> None:
    db_store, set_down = outage
    cap = 200_000
    ledger = Ledger(db_store, flush_interval=0.05, retry_interval=0.1, max_queue_bytes=cap)
    ledger.record(LedgerRecord(tenant_id="warm"))
    ledger.flush()
    set_down(True)
    prompt = "x" * 20_000
    for i in range(200):  # 4 MB of text, 20 times the cap
        ledger.record(LedgerRecord(tenant_id="capped", call_id=str(i), feature=prompt))
    with pytest.raises(LedgerFlushTimeout):
        ledger.flush(timeout=1.5)
    stats = ledger.stats
    assert stats["queued_bytes"] <= cap
    assert stats["overflow_files"] >= 1
    assert stats["pending"] == 200
    set_down(False)
    ledger.flush(timeout=60)
    rows = ledger.records(tenant_id="capped")
    assert sorted(int(r["call_id"]) for r in rows) == list(range(200))
    assert not list(ledger.spill_dir.glob("ledger-*"))
    ledger.close()
