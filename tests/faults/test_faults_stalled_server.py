"""A stopped server (SIGSTOP: a stalled disk or network) must not hang the caller.

Each store operation fails within its client-side deadline, is counted, and the caller fails
open (cache miss, budget proceeds, ledger keeps its queue) or closed where configured. After
SIGCONT everything works again and nothing recorded is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import (
    HANG_GUARD,
    fresh_home,
    in_thread,
    own_server,
    postmaster_pid,
    stopped,
)
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from graphthrift import Ledger, LedgerRecord, Store, StoreUnavailable, diagnostics
from graphthrift.budget import Budget
from graphthrift.cache import ExactCache
from graphthrift.ledger import LedgerFlushTimeout


@pytest.fixture(scope="module")
def stall_home() -> Iterator[Path]:
    with fresh_home() as home:
        yield home


@pytest.fixture(scope="module")
def stall_store(stall_home: Path) -> Iterator[Store]:
    with own_server(stall_home, query_timeout=0.5) as store:
        yield store


def _select_one(store: Store) -> object:
    with store.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar()


def test_a_sync_query_on_a_stopped_server_fails_and_is_counted(
    stall_store: Store, stall_home: Path
) -> None:
    assert _select_one(stall_store) == 1  # an idle pooled connection, as in the report
    before = diagnostics.get("store_timeout")
    with stopped(postmaster_pid(stall_home)):
        outcome = in_thread(lambda: _select_one(stall_store))
    assert isinstance(outcome, StoreUnavailable), outcome
    assert diagnostics.get("store_timeout") > before
    assert _select_one(stall_store) == 1  # the dropped connection was not pooled again


def test_an_async_query_on_a_stopped_server_fails_and_is_counted(
    stall_store: Store, stall_home: Path
) -> None:
    async def select_one() -> object:
        async with stall_store.async_engine.connect() as conn:
            return (await conn.execute(text("SELECT 1"))).scalar()

    async def scenario() -> tuple[object, BaseException | None, object]:
        warm = await select_one()
        error: BaseException | None = None
        with stopped(postmaster_pid(stall_home)):
            try:
                await asyncio.wait_for(select_one(), HANG_GUARD)
            except OperationalError as exc:
                error = exc
        return warm, error, await select_one()

    before = diagnostics.get("store_timeout")
    warm, error, after = asyncio.run(scenario())
    assert warm == 1 and after == 1
    assert isinstance(error, OperationalError)  # the deadline, or the bounded reconnect
    assert diagnostics.get("store_timeout") > before


def test_a_cancelled_async_query_drops_its_connection_instead_of_waiting(
    stall_store: Store, stall_home: Path
) -> None:
    """psycopg would ask the stopped server to cancel and wait up to 10 s for it."""

    async def scenario() -> bool:
        async with stall_store.async_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        with stopped(postmaster_pid(stall_home)), stall_store.deadline(None):
            try:
                async with asyncio.timeout(0.2):
                    async with stall_store.async_engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
            except TimeoutError:
                return True
        return False

    before = diagnostics.get("store_cancelled")
    assert asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD))
    assert diagnostics.get("store_cancelled") == before + 1


def test_a_cache_lookup_on_a_stopped_server_fails_open(
    stall_store: Store, stall_home: Path
) -> None:
    cache = ExactCache(stall_store, namespace="stall", tenant_id="acme", timeout=0.2)
    cache.update("What are your opening hours?", "9 to 5.")
    hit = cache.lookup("What are your opening hours?")
    assert hit is not None and hit.answer == "9 to 5."  # the pool now has an idle connection
    before = diagnostics.get("store_timeout")
    with stopped(postmaster_pid(stall_home)):
        outcome = in_thread(lambda: cache.lookup("What are your opening hours?"))
    assert outcome is None
    assert diagnostics.get("store_timeout") > before
    for _ in range(3):  # the stalled connection was dropped: a new one may miss 0.2 s once
        again = cache.lookup("What are your opening hours?")
        if again is not None:
            break
    assert again is not None and again.answer == "9 to 5."


@pytest.mark.parametrize("fail_closed", [False, True])
def test_a_budget_reservation_on_a_stopped_server_fails_open_or_closed(
    stall_store: Store, stall_home: Path, fail_closed: bool
) -> None:
    budget = Budget(stall_store, max_usd={"tenant": 5.0}, fail_closed=fail_closed)
    messages = [{"role": "user", "content": "hi"}]
    budget.reserve("gpt-4o-mini", messages, tags={"tenant_id": "acme"})  # warm the pool
    before = diagnostics.get("store_timeout")
    with stopped(postmaster_pid(stall_home)):
        outcome = in_thread(
            lambda: budget.reserve("gpt-4o-mini", messages, tags={"tenant_id": "acme"})
        )
    assert diagnostics.get("store_timeout") > before
    if fail_closed:
        assert isinstance(outcome, StoreUnavailable), outcome
    else:
        assert not isinstance(outcome, BaseException), outcome


def test_the_ledger_keeps_its_queue_through_a_stall(stall_store: Store, stall_home: Path) -> None:
    ledger = Ledger(stall_store, flush_interval=0.05, retry_interval=0.1)
    try:
        ledger.record(LedgerRecord(tenant_id="stall", call_id="before"))
        ledger.flush(timeout=30)
        with stopped(postmaster_pid(stall_home)):
            ledger.record_many(LedgerRecord(tenant_id="stall", call_id=str(i)) for i in range(50))
            with pytest.raises(LedgerFlushTimeout):
                ledger.flush(timeout=1.0)
        ledger.flush(timeout=HANG_GUARD)
        ids = {r["call_id"] for r in ledger.records(tenant_id="stall")}
        assert ids == {"before", *(str(i) for i in range(50))}
    finally:
        ledger.close()


def test_a_busy_server_is_waited_for_but_a_hard_deadline_is_not(stall_store: Store) -> None:
    """A long statement on a live server (an index build, a bulk insert) is not a hang."""
    with stall_store.connect() as conn:  # 2.5 s > query_timeout (0.5 s): probed, still busy
        assert conn.execute(text("SELECT 1 FROM pg_sleep(2.5)")).scalar() == 1
    before = diagnostics.get("store_timeout")
    with pytest.raises(StoreUnavailable), stall_store.deadline(0.5), stall_store.connect() as conn:
        conn.execute(text("SELECT pg_sleep(2.5)"))
    assert diagnostics.get("store_timeout") == before + 1
