"""The restart figures of ``graphthrift bench resilience``, from real worker processes.

A worker killed with ``kill -9`` after flushing ledger rows and reserving budget must lose no
flushed row and hold no reservation after it expires; a worker stopped with SIGTERM while one
of its units outlives the grace period must leave that unit recorded as interrupted, and two
resumers racing for it must resume it exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from typing import Any

from graphthrift.store import Store

__all__ = ["restart_figures"]


_KILLED = textwrap.dedent(
    """
    import sys, time
    from graphthrift import Budget, Ledger, LedgerRecord, Store
    store = Store(sys.argv[2])
    ledger = Ledger(store)
    for i in range(20):
        ledger.record(LedgerRecord(model="gpt-4o-mini", tenant_id=sys.argv[1], input_tokens=i))
    ledger.flush()
    budget = Budget(store, max_usd={"tenant": 5.0}, reservation_ttl=1.0)
    for _ in range(3):
        budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}],
                       tags={"tenant_id": sys.argv[1]})
    print("ready", flush=True)
    time.sleep(600)
    """
)


_DRAINED = textwrap.dedent(
    """
    import sys, threading, time
    from graphthrift import Ledger, Store
    from graphthrift.resilience import GracefulShutdown
    tenant = sys.argv[1]
    store = Store(sys.argv[2])
    shutdown = GracefulShutdown(ledger=Ledger(store), grace_s=2.0)
    shutdown.install()
    go, started = threading.Event(), threading.Semaphore(0)

    def unit(key, slow):
        with shutdown.work(key, tenant_id=tenant, payload={"job": key}):
            started.release()
            while slow or not go.is_set():
                time.sleep(0.01)

    for key, slow in (("finishes", False), ("outlives-grace", True)):
        threading.Thread(target=unit, args=(key, slow), daemon=True).start()
    started.acquire(); started.acquire()
    # the short unit ends inside the grace period; the timer starts before "ready", since
    # the SIGTERM handler may run at the very next line and would then wait for it in vain
    threading.Timer(0.05, go.set).start()
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def _drained_and_resumed(store: Store, url: str, env: dict[str, str]) -> dict[str, int]:
    """SIGTERM a worker with two units (one outlives the grace period); then two resumers
    race for what it left interrupted. Each interrupted unit must be resumed exactly once."""
    from graphthrift.resilience import GracefulShutdown

    tenant = f"bench-drain-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRAINED, tenant, url], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    recorded = len(GracefulShutdown(store=store).interrupted(tenant_id=tenant)) if ready else 0
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def resumer() -> None:
        shutdown = GracefulShutdown(store=store)
        barrier.wait(30)

        def resume(unit: Any) -> None:
            with lock:
                runs[unit.unit_id] += 1

        shutdown.resume_interrupted(resume, tenant_id=tenant)

    threads = [threading.Thread(target=resumer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return {
        "interrupted_units_recorded": recorded,
        "resumed_once": sum(1 for n in runs.values() if n == 1),
        "resumed_twice_or_more": sum(1 for n in runs.values() if n > 1),
    }


def restart_figures(store: Store) -> dict[str, int]:
    """The ``restart`` section: a worker killed with ``kill -9`` (flushed rows lost,
    reservations held after expiry) and a worker stopped with SIGTERM (units interrupted,
    each resumed once)."""
    from graphthrift.budget import Budget
    from graphthrift.ledger import Ledger

    tenant = f"bench-restart-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "GRAPHTHRIFT_HOME": str(store.home)}
    url = store.engine.url.render_as_string(hide_password=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, tenant, url], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = Ledger(store)
    try:
        found = len(ledger.records(tenant_id=tenant)) if ready else 0
    finally:
        ledger.close()
    budget = Budget(store, max_usd={"tenant": 5.0})
    time.sleep(1.2)
    budget.reclaim()
    held = budget.usage({"tenant_id": tenant})["tenant"]["reserved_usd"] > 1e-12
    return {
        "flushed_rows_lost": 20 - found,
        "reservations_held_after_expiry": 3 if held else 0,
        **_drained_and_resumed(store, url, env),
    }
