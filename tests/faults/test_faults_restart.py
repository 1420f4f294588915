"""Graceful restart with real processes: what a SIGTERM drain could not finish, or what a
``kill -9`` cut short, is recorded as interrupted, and exactly one later process resumes it.

A worker runs two units: one finishes inside the grace period, one never does. After SIGTERM
the finished one's ledger row is flushed, the slow one's budget reservation is released and
its unit is ``interrupted`` (with one ``kind="interrupted"`` ledger row). Two claimer
processes race for it: one resumes it, the other does not. After ``kill -9`` the unit is left
``running``; the next process sees its owner is gone and treats it as interrupted.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from fault_helpers import HANG_GUARD, python
from sqlalchemy import text

from graphthrift import Budget, Ledger, Store
from graphthrift.resilience import GracefulShutdown
from graphthrift.resilience.schema import INFLIGHT_TABLE

WORKER = """
import json, os, sys, threading, time
from pathlib import Path
from graphthrift import Budget, Ledger, LedgerRecord, Store
from graphthrift.resilience import GracefulShutdown

tenant, finish = sys.argv[1], Path(sys.argv[2])
store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
ledger = Ledger(store, flush_interval=60)  # nothing is written until a flush
budget = Budget(store, max_usd={"tenant": 5.0}, max_output_tokens=200)

def report(r):
    print(json.dumps({"finished": r.finished, "abandoned": r.abandoned,
                      "interrupted": r.interrupted, "released": r.released,
                      "flushed": r.ledger_flushed}), flush=True)
    raise SystemExit(0)

shutdown = GracefulShutdown(ledger=ledger, budget=budget, grace_s=2, on_drained=report)
shutdown.install()
started = threading.Semaphore(0)

def call(key, slow):
    with shutdown.work(key, tenant_id=tenant, run_id=f"run-{key}", payload={"job": key}):
        held = budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}],
                              tags={"tenant_id": tenant})
        shutdown.hold(held)
        started.release()
        while slow or not finish.exists():
            time.sleep(0.02)
        ledger.record(LedgerRecord(model="gpt-4o-mini", tenant_id=tenant, run_id=f"run-{key}",
                                   input_tokens=10, output_tokens=20))
        budget.settle(held, input_tokens=10, output_tokens=20)
        shutdown.drop(held)

for key, slow in (("fast", False), ("slow", True)):
    threading.Thread(target=call, args=(key, slow), daemon=True).start()
for _ in range(2):
    started.acquire()
print("busy", flush=True)
while True:
    time.sleep(0.05)
"""

CLAIMER = """
import json, os, sys, time
from pathlib import Path
from graphthrift import Store
from graphthrift.resilience import GracefulShutdown

tenant, go, done = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
shutdown = GracefulShutdown(store=Store(home=os.environ["GRAPHTHRIFT_HOME"]))
shutdown.inflight.get("warm-up")  # connected before the race starts
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)

def resume(unit):
    with done.open("a") as f:
        f.write(f"{os.getpid()} {unit.key} {json.dumps(unit.payload)}\\n")

report = shutdown.resume_interrupted(resume, tenant_id=tenant)
print(json.dumps({"resumed": list(report.resumed), "taken": list(report.taken)}), flush=True)
"""

KILLED = """
import os, sys, time
from graphthrift import Store
from graphthrift.resilience import GracefulShutdown

tenant = sys.argv[1]
shutdown = GracefulShutdown(store=Store(home=os.environ["GRAPHTHRIFT_HOME"]))
with shutdown.work("cut-short", tenant_id=tenant, thread_id="th-9", payload={"job": 9}):
    print("busy", flush=True)
    time.sleep(600)
"""


def _race(tenant: str, tmp_path: Path) -> tuple[list[dict[str, list[str]]], list[str]]:
    """Two claimer processes resume the tenant's interrupted units at the same moment."""
    go, done = tmp_path / "go", tmp_path / "done"
    procs = [python(CLAIMER, tenant, str(go), str(done)) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "ready", proc.stderr.read() if proc.stderr else ""
        go.touch()
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=HANG_GUARD)
            assert proc.returncode == 0, err
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    lines = done.read_text().splitlines() if done.exists() else []
    return outs, lines


def test_sigterm_flushes_the_finished_unit_and_records_the_slow_one_interrupted(
    store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    finish = tmp_path / "finish"
    proc = python(WORKER, tenant, str(finish))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "busy", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        finish.touch()
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {
        "finished": 1,
        "abandoned": 1,
        "interrupted": 1,
        "released": 1,
        "flushed": True,
    }
    llm = ledger.records(tenant_id=tenant, kind="llm")
    assert [row["run_id"] for row in llm] == ["run-fast"]  # flushed by the drain
    [booked] = ledger.records(tenant_id=tenant, kind="interrupted")
    assert booked["run_id"] == "run-slow" and booked["extra"]["key"] == "slow"
    usage = Budget(store, max_usd={"tenant": 5.0}).usage({"tenant_id": tenant})["tenant"]
    assert usage["reserved_usd"] == pytest.approx(0, abs=1e-12)  # the slow one's, released
    assert usage["spent_usd"] > 0
    [unit] = GracefulShutdown(store=store).interrupted(tenant_id=tenant)
    assert (unit.key, unit.status, unit.payload) == ("slow", "interrupted", {"job": "slow"})
    assert unit.reason is not None and "grace period" in unit.reason

    outs, lines = _race(tenant, tmp_path)
    resumed = [unit_id for o in outs for unit_id in o["resumed"]]
    assert resumed == [unit.unit_id]  # one claimer won, the other resumed nothing
    assert len(lines) == 1 and lines[0].endswith('slow {"job": "slow"}')
    assert GracefulShutdown(store=store).interrupted(tenant_id=tenant) == []
    after = GracefulShutdown(store=store).inflight.get(unit.unit_id)
    assert after is not None and (after.status, after.claims) == ("done", 1)


def test_kill_9_leaves_the_unit_running_and_the_next_process_treats_it_as_interrupted(
    store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    proc = python(KILLED, tenant)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "busy", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
    probe = GracefulShutdown(store=store)
    with store.connect() as conn:  # nothing ran at the kill: the row is still "running"
        statuses = conn.execute(
            text(f"SELECT status FROM {INFLIGHT_TABLE} WHERE tenant_id = :t"), {"t": tenant}
        ).all()
    assert [row.status for row in statuses] == ["running"]
    [unit] = GracefulShutdown(ledger=ledger).interrupted(tenant_id=tenant)
    assert (unit.key, unit.thread_id, unit.owner_pid) == ("cut-short", "th-9", proc.pid)
    assert unit.reason is not None and "is gone" in unit.reason
    ledger.flush()
    [booked] = ledger.records(tenant_id=tenant, kind="interrupted")
    assert booked["thread_id"] == "th-9"

    outs, lines = _race(tenant, tmp_path)
    assert [u for o in outs for u in o["resumed"]] == [unit.unit_id]
    assert len(lines) == 1 and "cut-short" in lines[0]
    assert probe.interrupted(tenant_id=tenant) == []
