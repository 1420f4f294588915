"""Graceful restart, the checkpoint half: units in flight are recorded in the store, a drain
marks the ones it gave up on interrupted (and books them), a dead owner's units are found by
the next process, and each interrupted unit is claimed by exactly one resumer."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from graphthrift import Ledger, Store, diagnostics
from graphthrift.errors import ShuttingDown
from graphthrift.resilience import GracefulShutdown, InFlightLog, InFlightUnit
from graphthrift.resilience.schema import INFLIGHT_TABLE


def _status(log: InFlightLog, unit: InFlightUnit) -> str:
    found = log.get(unit.unit_id)
    assert found is not None
    return found.status


def _wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 60  # a hang guard, not a timing
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_work_without_a_key_records_nothing_and_needs_no_store() -> None:
    shutdown = GracefulShutdown(grace_s=1)  # no store, no ledger: no database round trip
    with shutdown.work() as unit:
        assert unit is None
    with pytest.raises(ValueError, match="needs a store"), shutdown.work("job-1"):
        pass


def test_a_unit_is_running_while_it_runs_and_done_after(ledger: Ledger, tenant: str) -> None:
    shutdown = GracefulShutdown(ledger=ledger, grace_s=1)
    with shutdown.work("job-1", tenant_id=tenant, payload={"n": 1}) as unit:
        assert unit is not None
        assert _status(shutdown.inflight, unit) == "running"
        stored = shutdown.inflight.get(unit.unit_id)
        assert stored is not None and stored.payload == {"n": 1} and stored.tenant_id == tenant
    assert _status(shutdown.inflight, unit) == "done"
    assert shutdown.interrupted(tenant_id=tenant) == []


def test_a_unit_that_fails_on_its_own_is_done_and_one_stopped_by_exit_is_interrupted(
    ledger: Ledger, tenant: str
) -> None:
    shutdown = GracefulShutdown(ledger=ledger, grace_s=1)
    with pytest.raises(RuntimeError), shutdown.work("fails", tenant_id=tenant) as failed:
        raise RuntimeError("the caller's own error")
    assert failed is not None and _status(shutdown.inflight, failed) == "done"
    with pytest.raises(SystemExit), shutdown.work("stopped", tenant_id=tenant) as stopped:
        raise SystemExit(0)
    assert stopped is not None and _status(shutdown.inflight, stopped) == "interrupted"
    [listed] = shutdown.interrupted(tenant_id=tenant)
    assert listed.unit_id == stopped.unit_id and listed.reason == "stopped by SystemExit"


def test_drain_marks_the_unit_it_gave_up_on_interrupted_and_books_one_ledger_row(
    ledger: Ledger, tenant: str
) -> None:
    shutdown = GracefulShutdown(ledger=ledger, grace_s=0.2)
    release = threading.Event()
    units: list[InFlightUnit | None] = []

    def worker() -> None:
        with shutdown.work(
            "slow-job", tenant_id=tenant, thread_id="th-1", run_id="run-1", tags={"node": "n1"}
        ) as unit:
            units.append(unit)
            release.wait(60)

    t = threading.Thread(target=worker)
    t.start()
    _wait_until(lambda: units, "the unit started")
    report = shutdown.drain()
    assert (report.abandoned, report.interrupted) == (1, 1)
    unit = units[0]
    assert unit is not None
    stored = shutdown.inflight.get(unit.unit_id)
    assert stored is not None and stored.status == "interrupted"
    assert stored.reason is not None and "grace period" in stored.reason
    assert stored.elapsed_s is not None and stored.elapsed_s >= 0
    rows = ledger.records(tenant_id=tenant, kind="interrupted")
    assert len(rows) == 1  # flushed by the drain
    row = rows[0]
    assert (row["thread_id"], row["run_id"], row["node"]) == ("th-1", "run-1", "n1")
    assert row["layer"] == "graceful_shutdown" and row["extra"]["key"] == "slow-job"
    release.set()
    t.join(60)
    # it finished after all (the process was not stopped): done, so nobody resumes it twice
    assert _status(shutdown.inflight, unit) == "done"
    assert len(ledger.records(tenant_id=tenant, kind="interrupted")) == 1


def _interrupted_unit(ledger: Ledger, tenant: str, **kwargs: Any) -> InFlightUnit:
    shutdown = GracefulShutdown(ledger=ledger, grace_s=1)
    with pytest.raises(SystemExit), shutdown.work(tenant_id=tenant, **kwargs) as unit:
        raise SystemExit(0)
    assert unit is not None
    return unit


def test_an_interrupted_unit_is_claimed_once_by_racing_claimers(
    ledger: Ledger, tenant: str
) -> None:
    unit = _interrupted_unit(ledger, tenant, key="race")
    claimers = [GracefulShutdown(ledger=ledger) for _ in range(8)]
    barrier = threading.Barrier(len(claimers))
    won: list[InFlightUnit | None] = []

    def claim(s: GracefulShutdown) -> None:
        barrier.wait()
        won.append(s.claim(unit))

    threads = [threading.Thread(target=claim, args=(s,)) for s in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [w for w in won if w is not None]
    assert len(won) == 8 and len(winners) == 1
    assert winners[0].status == "resumed" and winners[0].claims == 1
    assert claimers[0].interrupted(tenant_id=tenant) == []


def test_resume_runs_each_unit_once_and_a_failed_resume_is_interrupted_again(
    ledger: Ledger, tenant: str
) -> None:
    unit = _interrupted_unit(ledger, tenant, key="job-9", payload={"invoice": 9})
    shutdown = GracefulShutdown(ledger=ledger)

    def broken(u: InFlightUnit) -> None:
        raise ConnectionError("provider still down")

    report = shutdown.resume_interrupted(broken, tenant_id=tenant)
    assert (report.resumed, report.failed) == ((), (unit.unit_id,))
    [again] = shutdown.interrupted(tenant_id=tenant)
    assert again.reason is not None and "ConnectionError" in again.reason and again.claims == 1
    seen: list[Any] = []
    report = shutdown.resume_interrupted(lambda u: seen.append(u.payload) or "ok", tenant_id=tenant)
    assert report.resumed == (unit.unit_id,) and report.results == {unit.unit_id: "ok"}
    assert seen == [{"invoice": 9}]
    assert _status(shutdown.inflight, unit) == "done"
    assert shutdown.resume_interrupted(lambda u: seen.append(u), tenant_id=tenant).resumed == ()
    assert seen == [{"invoice": 9}]
    # the stop and the failed resume: two interruptions, two ledger rows
    ledger.flush()
    assert len(ledger.records(tenant_id=tenant, kind="interrupted")) == 2


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(60)
    return proc.pid


def _insert_running(
    store: Store, tenant: str, *, host: str, pid: int, lease_s: float, owner: str | None = None
) -> str:
    unit_id = uuid.uuid4().hex
    with store.connect() as conn:
        conn.execute(
            text(f"""
            INSERT INTO {INFLIGHT_TABLE} (unit_id, key, tenant_id, status, owner, owner_host,
                owner_pid, lease_until)
            VALUES (:id, 'left', :tenant, 'running', :owner, :host, :pid,
                now() + make_interval(secs => :lease))
            """),
            {
                "id": unit_id,
                "tenant": tenant,
                "owner": owner or f"{host}:{pid}:1",
                "host": host,
                "pid": pid,
                "lease": lease_s,
            },
        )
    return unit_id


def test_units_of_a_dead_owner_on_this_host_are_interrupted_once(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    log = InFlightLog(store, ledger=ledger)
    dead = _insert_running(store, tenant, host=log.host, pid=_dead_pid(), lease_s=3600)
    alive = _insert_running(store, tenant, host=log.host, pid=1, lease_s=3600, owner=log.owner)
    listed = InFlightLog(store, ledger=ledger).interrupted(tenant_id=tenant)
    assert [u.unit_id for u in listed] == [dead]
    assert listed[0].reason is not None and "is gone" in listed[0].reason
    assert log.reap() == []  # already marked: no second ledger row
    ledger.flush()
    assert len(ledger.records(tenant_id=tenant, kind="interrupted")) == 1
    found = log.get(alive)
    assert found is not None and found.status == "running"  # this process owns it: alive


def test_units_whose_lease_lapsed_on_another_host_are_interrupted(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    lapsed = _insert_running(store, tenant, host="elsewhere", pid=4242, lease_s=-1)
    fresh = _insert_running(store, tenant, host="elsewhere", pid=4243, lease_s=3600)
    listed = InFlightLog(store, ledger=ledger).interrupted(tenant_id=tenant)
    assert [u.unit_id for u in listed] == [lapsed]
    assert listed[0].reason is not None and "lease lapsed" in listed[0].reason
    found = InFlightLog(store).get(fresh)
    assert found is not None and found.status == "running"


def test_a_closed_ledger_does_not_stop_the_interruption_and_is_counted(
    store: Store, tenant: str
) -> None:
    closed = Ledger(store)
    closed.close()
    shutdown = GracefulShutdown(ledger=closed, grace_s=1)
    before = diagnostics.get("inflight_unbooked")
    with pytest.raises(SystemExit), shutdown.work("job", tenant_id=tenant) as unit:
        raise SystemExit(0)
    assert unit is not None and _status(shutdown.inflight, unit) == "interrupted"
    assert diagnostics.get("inflight_unbooked") == before + 1


def test_bad_input_is_refused_with_a_clear_error(store: Store) -> None:
    with pytest.raises(ValueError, match="JSON-serializable"):
        InFlightLog(store).start("job", payload=object())
    with pytest.raises(ValueError, match="non-empty string key"):
        InFlightLog(store).start("")
    with pytest.raises(ValueError, match="lease_s"):
        GracefulShutdown(store=store, lease_s=0)


def test_a_draining_process_claims_nothing_and_a_resume_cut_short_is_interrupted_again(
    ledger: Ledger, tenant: str
) -> None:
    first = _interrupted_unit(ledger, tenant, key="first", payload=1)
    second = _interrupted_unit(ledger, tenant, key="second", payload=2)
    shutdown = GracefulShutdown(ledger=ledger, grace_s=0.1)
    drained: list[Any] = []

    def resume(u: InFlightUnit) -> None:
        drained.append(shutdown.drain())  # a SIGTERM while the first unit resumes: the
        raise SystemExit(0)  # handler drains, then the process exits through the work

    with pytest.raises(SystemExit):
        shutdown.resume_interrupted(resume, tenant_id=tenant)
    assert drained[0].interrupted == 1
    [cut, untouched] = sorted(shutdown.inflight.interrupted(tenant_id=tenant), key=lambda u: u.key)
    assert (cut.unit_id, cut.claims) == (first.unit_id, 1)
    assert cut.reason is not None and "grace period" in cut.reason
    assert (untouched.unit_id, untouched.claims) == (second.unit_id, 0)  # never claimed
    with pytest.raises(ShuttingDown):
        shutdown.resume_interrupted(resume, tenant_id=tenant)


def test_resume_claims_no_further_unit_once_the_process_drains(ledger: Ledger, tenant: str) -> None:
    first = _interrupted_unit(ledger, tenant, key="a-first", payload=1)
    second = _interrupted_unit(ledger, tenant, key="b-second", payload=2)
    shutdown = GracefulShutdown(ledger=ledger, grace_s=0.1)
    report = shutdown.resume_interrupted(lambda u: shutdown.drain(), tenant_id=tenant)
    assert report.resumed == (first.unit_id,)  # it finished (after the drain gave up on it)
    [left] = GracefulShutdown(ledger=ledger).interrupted(tenant_id=tenant)
    assert (left.unit_id, left.claims) == (second.unit_id, 0)


def test_a_store_that_is_down_never_stops_the_work_and_is_counted(tenant: str) -> None:
    from sqlalchemy import create_engine

    dead = Store.__new__(Store)  # a store whose database is gone
    dead.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    dead.display_url = "postgresql://127.0.0.1:1/none"
    dead._secrets = ()
    shutdown = GracefulShutdown(store=dead, grace_s=1)
    before = diagnostics.get("inflight_store_failure")
    ran: list[int] = []
    with shutdown.work("job", tenant_id=tenant) as unit:
        ran.append(1)
    assert unit is None and ran == [1]  # ran unrecorded
    assert shutdown.interrupted(tenant_id=tenant) == []  # listing fails open too
    assert shutdown.resume_interrupted(lambda u: ran.append(2)).resumed == ()
    assert ran == [1] and diagnostics.get("inflight_store_failure") >= before + 3


def test_a_pid_is_only_checked_on_the_host_and_pid_namespace_it_belongs_to(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    log = InFlightLog(store, ledger=ledger)
    name = log.host.split("~")[0]
    # the same host name, another pid namespace (a container sharing the host's network):
    # the pid means nothing here, so only a lapsed lease would make the unit interrupted
    other = _insert_running(store, tenant, host=f"{name}~1~0", pid=_dead_pid(), lease_s=3600)
    assert log.interrupted(tenant_id=tenant) == []
    found = log.get(other)
    assert found is not None and found.status == "running"


def test_a_drain_that_starts_while_a_unit_is_being_recorded_still_marks_it(
    ledger: Ledger, tenant: str
) -> None:
    """``work()`` counts the call in flight before its row is written: a drain that begins
    in between (here with no grace at all) waits for the row, then marks the unit
    interrupted and books it, as it does for a unit recorded earlier."""
    shutdown = GracefulShutdown(ledger=ledger, grace_s=0)
    log = shutdown.inflight
    writing, release = threading.Event(), threading.Event()
    start = log.start

    def slow_start(*args: Any, **kwargs: Any) -> InFlightUnit | None:
        writing.set()
        release.wait(5)
        return start(*args, **kwargs)

    log.start = slow_start  # type: ignore[method-assign]
    done = threading.Event()

    def job() -> None:
        with shutdown.work("just-started", tenant_id=tenant, payload={"n": 1}):
            done.wait(5)

    worker = threading.Thread(target=job)
    worker.start()
    assert writing.wait(5)
    threading.Timer(0.2, release.set).start()  # the row lands while the drain has begun
    report = shutdown.drain()
    try:
        assert report.interrupted == 1 and report.abandoned == 1
        listed = GracefulShutdown(ledger=ledger).interrupted(tenant_id=tenant)
        assert [u.key for u in listed] == ["just-started"]
        ledger.flush()
        assert len(ledger.records(tenant_id=tenant, kind="interrupted")) == 1
    finally:
        done.set()  # (a unit that finishes after all is marked done, by design)
        worker.join(5)
