"""The no-fault path of single-flight does no avoidable work: a leader nobody in another
process waits for releases its lock in one statement and writes no answer row (the write's
commit was most of the added latency), while a waiter in another session still gets the
leader's answer through the row, and no call leaves an advisory lock behind."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import text

from graphthrift import Store
from graphthrift.resilience import SingleFlight
from graphthrift.resilience._flight import key_hash, lock_id, waiters_lock_id


def _rows(store: Store, tenant: str) -> int:
    with store.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM graphthrift_flights WHERE tenant_id = :t"),
                {"t": tenant},
            ).scalar_one()
        )


def _advisory_holders(store: Store, lock: int, *, shared: bool | None = None) -> int:
    """Sessions holding the advisory lock ``lock`` (granted), optionally of one mode."""
    mode = "" if shared is None else " AND mode = :mode"
    with store.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    f" AND classid = :hi AND objid = :lo AND objsubid = 1{mode}"
                ),
                {
                    "hi": (lock >> 32) & 0xFFFFFFFF,
                    "lo": lock & 0xFFFFFFFF,
                    "mode": "ShareLock" if shared else "ExclusiveLock",
                },
            ).scalar_one()
        )


def test_a_call_nobody_waits_for_writes_no_row_and_holds_no_lock(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    scope = {"tenant_id": tenant}
    answers = [flight.call(f"alone-{i}", lambda: {"n": 1}, scope=scope) for i in range(5)]
    assert answers == [{"n": 1}] * 5 and flight.stats.calls == 5
    assert _rows(store, tenant) == 0  # nothing to hand over: no write, no commit to wait for
    digest = key_hash("single_flight", "alone-0", scope)
    assert _advisory_holders(store, lock_id(digest)) == 0
    assert _advisory_holders(store, waiters_lock_id(digest)) == 0


def test_a_waiter_of_another_session_still_gets_the_answer_through_the_row(
    store: Store, tenant: str
) -> None:
    leader, other = SingleFlight(store), SingleFlight(store, poll_interval=0.01)
    scope = {"tenant_id": tenant}
    digest = key_hash("single_flight", "shared", scope)
    calls: list[int] = []

    def provider() -> dict[str, Any]:
        calls.append(1)
        deadline = time.monotonic() + 60  # a hang guard, not a timing
        # the other engine (its own session, as another process) has registered as a waiter
        while _advisory_holders(store, waiters_lock_id(digest), shared=True) < 2:
            assert time.monotonic() < deadline, "the waiter never registered"
            time.sleep(0.01)
        return {"text": "one answer"}

    out: dict[str, Any] = {}
    lead = threading.Thread(
        target=lambda: out.update(a=leader.call("shared", provider, scope=scope))
    )
    lead.start()
    deadline = time.monotonic() + 60
    while not calls:
        assert time.monotonic() < deadline, "the leader never called"
        time.sleep(0.01)
    out["b"] = other.call("shared", lambda: {"text": "a second generation"}, scope=scope)
    lead.join(60)
    assert out == {"a": {"text": "one answer"}, "b": {"text": "one answer"}}
    assert calls == [1] and other.stats.shared_store == 1
    assert _rows(store, tenant) == 1
    assert _advisory_holders(store, lock_id(digest)) == 0
    assert _advisory_holders(store, waiters_lock_id(digest)) == 0
