"""Request-id dedup: a retry waits for the running request or gets its stored answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from graphthrift import Ledger, Store, diagnostics
from graphthrift.errors import RequestIdConflict
from graphthrift.ledger import Usage
from graphthrift.resilience import RequestDedup


def _wait_until(condition: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _never() -> str:
    raise AssertionError("a retry must not run the request again")


def test_retry_of_running_request_waits_for_it(store: Store, ledger: Ledger, tenant: str) -> None:
    dedup = RequestDedup(store, ledger=ledger)
    gate = threading.Event()
    results: list[str] = []

    def first() -> str:
        gate.wait(30)
        return "final answer"

    scope = {"tenant_id": tenant}
    t1 = threading.Thread(target=lambda: results.append(dedup.call("r1", first, scope=scope)))
    t1.start()
    _wait_until(lambda: len(dedup.engine._flights) == 1, "the first request")
    t2 = threading.Thread(
        target=lambda: results.append(
            dedup.call("r1", _never, scope=scope, model="gpt-4o-mini", usage_of=lambda _: None)
        )
    )
    t2.start()
    _wait_until(lambda: dedup.engine.waiting() == 1, "the retry to wait")
    gate.set()
    t1.join(60)
    t2.join(60)
    assert results == ["final answer", "final answer"]
    assert dedup.stats.calls == 1
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="dedup")
    assert [(r["layer"], r["extra"]["request_id"]) for r in rows] == [("request_id", "r1")]


def test_retry_of_finished_request_gets_stored_answer(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    scope = {"tenant_id": tenant}
    usage = Usage(input_tokens=2000, output_tokens=500)
    first = RequestDedup(store)
    assert first.call(
        "r2", lambda: {"answer": 42}, scope=scope, model="gpt-4o", usage_of=lambda _: usage
    ) == {"answer": 42}
    retry = RequestDedup(store, ledger=ledger)  # another process, later
    assert retry.call("r2", _never, scope=scope) == {"answer": 42}
    assert retry.stats.calls == 0 and retry.stats.shared_store == 1
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="dedup")
    assert row["model"] == "gpt-4o" and row["saved_usd"] > 0
    assert row["saved_tokens"] == 2500


def test_answer_past_the_window_is_not_served(store: Store, tenant: str) -> None:
    scope = {"tenant_id": tenant}
    dedup = RequestDedup(store, window_s=60)
    assert dedup.call("r3", lambda: "old", scope=scope) == "old"
    with store.connect() as conn:  # the answer is now 2 minutes old
        conn.execute(
            text(
                "UPDATE graphthrift_flights SET finished_at = finished_at - interval '2 minutes'"
                " WHERE tenant_id = :t"
            ),
            {"t": tenant},
        )
    assert dedup.call("r3", lambda: "new", scope=scope) == "new"


def test_failed_request_is_run_again(store: Store, tenant: str) -> None:
    dedup = RequestDedup(store)
    scope = {"tenant_id": tenant}

    def fails() -> str:
        raise TimeoutError("upstream timed out")

    with pytest.raises(TimeoutError):
        dedup.call("r4", fails, scope=scope)
    assert dedup.call("r4", lambda: "second try", scope=scope) == "second try"


def test_request_id_reused_for_another_request_is_refused(store: Store, tenant: str) -> None:
    dedup = RequestDedup(store)
    scope = {"tenant_id": tenant}
    dedup.call("r5", lambda: "about cards", scope=scope, fingerprint="fp-cards")
    with pytest.raises(RequestIdConflict) as err:
        dedup.call("r5", _never, scope=scope, fingerprint="fp-loans")
    assert err.value.request_id == "r5" and err.value.stored == "fp-cards"
    assert dedup.call("r5", _never, scope=scope, fingerprint="fp-cards") == "about cards"


def test_request_ids_are_scoped_by_tenant(store: Store, tenant: str) -> None:
    dedup = RequestDedup(store)
    assert dedup.call("r6", lambda: "a", scope={"tenant_id": tenant}) == "a"
    assert dedup.call("r6", lambda: "b", scope={"tenant_id": tenant + "-other"}) == "b"


def test_async_retry_gets_stored_answer(store: Store, tenant: str) -> None:
    import asyncio

    dedup = RequestDedup(store)
    scope = {"tenant_id": tenant}

    async def run() -> tuple[str, str]:
        async def first() -> str:
            return "async final"

        async def again() -> str:
            raise AssertionError("must not run again")

        a = await dedup.acall("r7", first, scope=scope)
        b = await dedup.acall("r7", again, scope=scope)
        return a, b

    assert asyncio.run(run()) == ("async final", "async final")


_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from graphthrift import Store
    from graphthrift.resilience import RequestDedup

    store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
    dedup = RequestDedup(store)

    def stuck():
        print("running", flush=True)
        time.sleep(600)
        return "never"

    dedup.call("r-crash", stuck, scope={"tenant_id": sys.argv[1]})
    """
)


def test_retry_takes_over_when_the_running_process_is_killed(store: Store, tenant: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, tenant],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running", (
            proc.stderr.read() if proc.stderr else ""
        )
        dedup = RequestDedup(store, poll_interval=0.02)
        timeouts = diagnostics.get("request_id_wait_timeout")
        result: list[str] = []
        retry = threading.Thread(
            target=lambda: result.append(
                dedup.call("r-crash", lambda: "taken over", scope={"tenant_id": tenant})
            )
        )
        retry.start()
        retry.join(0.5)
        assert result == []  # the retry waits for the running request
        os.kill(proc.pid, signal.SIGKILL)
        retry.join(60)
        assert result == ["taken over"]
        assert dedup.stats.calls == 1
        assert diagnostics.get("request_id_wait_timeout") == timeouts
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
