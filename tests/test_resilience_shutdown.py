"""Graceful restart: SIGTERM drains and releases; kill -9 loses no flushed row, and
reservations expire."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from graphthrift import Budget, Ledger, Store
from graphthrift.errors import ShuttingDown
from graphthrift.resilience import GracefulShutdown

_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )


def test_drain_refuses_new_work_and_waits_for_work_in_flight(ledger: Ledger) -> None:
    shutdown = GracefulShutdown(ledger=ledger, grace_s=30)
    release = threading.Event()
    done: list[int] = []

    def worker() -> None:
        with shutdown.work():
            release.wait(30)
            done.append(1)

    t = threading.Thread(target=worker)
    t.start()
    while shutdown.in_flight == 0:
        time.sleep(0.01)
    drained: list[object] = []
    d = threading.Thread(target=lambda: drained.append(shutdown.drain()))
    d.start()
    while not shutdown.draining:
        time.sleep(0.01)
    with pytest.raises(ShuttingDown) as err, shutdown.work():
        pass
    assert err.value.in_flight == 1
    release.set()
    d.join(30)
    t.join(30)
    assert done == [1]
    report = shutdown.report
    assert report is not None and (report.finished, report.abandoned) == (1, 0)
    assert report.ledger_flushed


_WORKER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from pathlib import Path
    from graphthrift import Budget, Ledger, LedgerRecord, Store
    from graphthrift.resilience import GracefulShutdown

    tenant, finish = sys.argv[1], Path(sys.argv[2])
    store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
    ledger = Ledger(store, flush_interval=60)  # nothing is written until a flush
    budget = Budget(store, max_usd={"tenant": 5.0}, max_output_tokens=200)
    tags = {"tenant_id": tenant}

    def report(r):
        print(json.dumps({"finished": r.finished, "abandoned": r.abandoned,
                          "released": r.released, "flushed": r.ledger_flushed}), flush=True)
        raise SystemExit(0)

    shutdown = GracefulShutdown(ledger=ledger, budget=budget, grace_s=3, on_drained=report)
    shutdown.install()
    started = threading.Semaphore(0)

    def call(slow):
        with shutdown.work():
            held = budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}], tags=tags)
            shutdown.hold(held)
            started.release()
            while not finish.exists() or slow:
                time.sleep(0.02)
            ledger.record(LedgerRecord(model="gpt-4o-mini", tenant_id=tenant,
                                       input_tokens=10, output_tokens=20))
            budget.settle(held, input_tokens=10, output_tokens=20)
            shutdown.drop(held)

    for slow in (False, False, False, True):
        threading.Thread(target=call, args=(slow,), daemon=True).start()
    for _ in range(4):
        started.acquire()
    print("busy", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def test_sigterm_finishes_in_flight_flushes_and_releases(
    store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    finish = tmp_path / "finish"
    proc = _spawn(_WORKER, tenant, str(finish))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "busy", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        finish.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"finished": 3, "abandoned": 1, "released": 1, "flushed": True}
    rows = ledger.records(tenant_id=tenant, kind="llm")
    assert len(rows) == 3  # written by the drain's flush (the writer waits 60 s otherwise)
    usage = Budget(store, max_usd={"tenant": 5.0}).usage({"tenant_id": tenant})["tenant"]
    assert usage["reserved_usd"] == pytest.approx(0, abs=1e-12)  # float sums of the budget
    assert usage["spent_usd"] > 0


_KILLED = textwrap.dedent(
    """
    import os, sys, time
    from graphthrift import Budget, Ledger, LedgerRecord, Store

    tenant = sys.argv[1]
    store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
    ledger = Ledger(store)
    for i in range(5):
        ledger.record(LedgerRecord(model="gpt-4o-mini", tenant_id=tenant, input_tokens=i))
    ledger.flush()
    budget = Budget(store, max_usd={"tenant": 5.0}, reservation_ttl=1.0)
    budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}],
                   tags={"tenant_id": tenant})
    print("flushed and reserved", flush=True)
    time.sleep(600)
    """
)


def test_kill_9_loses_no_flushed_row_and_reservations_expire(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    proc = _spawn(_KILLED, tenant)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "flushed and reserved", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(ledger.records(tenant_id=tenant)) == 5
    budget = Budget(store, max_usd={"tenant": 5.0})
    assert budget.usage({"tenant_id": tenant})["tenant"]["reserved_usd"] > 0  # stranded
    deadline = time.monotonic() + 60
    while budget.usage({"tenant_id": tenant})["tenant"]["reserved_usd"] > 1e-12:
        assert time.monotonic() < deadline, "the reservation never expired"
        budget.reclaim()
        time.sleep(0.2)
    assert budget.usage({"tenant_id": tenant})["tenant"]["reserved_usd"] == pytest.approx(
        0, abs=1e-12
    )
    assert len(ledger.records(tenant_id=tenant)) == 5


def test_drain_releases_the_budgets_open_reservations_it_was_never_handed(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    """A call stopped mid-flight (``BudgetMiddleware`` reserved it; nothing called ``hold``)
    strands no reservation: the drain releases what its budget still holds open."""
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=100)
    settled = budget.reserve(
        "gpt-4o-mini", [{"role": "user", "content": "hi"}], tags={"tenant_id": tenant}
    )
    running = budget.reserve(
        "gpt-4o-mini", [{"role": "user", "content": "hello"}], tags={"tenant_id": tenant}
    )
    budget.settle(settled, input_tokens=9, output_tokens=20)
    assert [r.id for r in budget.open_reservations()] == [running.id]
    assert budget.usage(tenant_id=tenant)["tenant"]["reserved_usd"] > 0
    report = GracefulShutdown(ledger=ledger, budget=budget, grace_s=0).drain()
    assert report.released == 1 and running.settled
    row = budget.usage(tenant_id=tenant)["tenant"]
    assert (row["reserved_usd"], row["reserved_tokens"]) == (0, 0)
    assert budget.open_reservations() == []


def test_a_call_that_finishes_after_the_drain_still_books_its_spend(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    """The drain releases the reservation of a call it stopped waiting for, but the call may
    still finish (a worker thread, a custom ``on_drained``): its settle must book what it
    spent, not be skipped as already settled."""
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=100)
    running = budget.reserve(
        "gpt-4o-mini", [{"role": "user", "content": "hello"}], tags={"tenant_id": tenant}
    )
    assert GracefulShutdown(ledger=ledger, budget=budget, grace_s=0).drain().released == 1
    assert budget.usage(tenant_id=tenant)["tenant"]["spent_usd"] == 0
    with pytest.raises(ValueError):  # a bad settle books nothing and keeps it bookable
        budget.settle(running, input_tokens=-1, output_tokens=100)
    budget.settle(running, input_tokens=1000, output_tokens=100)  # the call came back
    row = budget.usage(tenant_id=tenant)["tenant"]
    assert row["spent_usd"] == pytest.approx(running.actual_usd) and row["spent_usd"] > 0
    assert (row["reserved_usd"], row["reserved_tokens"]) == (0, 0)
    budget.settle(running, input_tokens=1000, output_tokens=100)  # twice is still once
    assert budget.usage(tenant_id=tenant)["tenant"]["spent_usd"] == pytest.approx(row["spent_usd"])
