"""Single-flight: a burst of identical concurrent requests makes one provider call."""

from __future__ import annotations

import asyncio
import json
import os
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
from graphthrift.ledger import Usage, cost_usd
from graphthrift.resilience import SingleFlight

MODEL = "gpt-4o-mini"
USAGE = Usage(input_tokens=1200, output_tokens=300)


def _usage(_: Any) -> Usage:
    return USAGE


def _wait_until(condition: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_burst_of_50_threads_makes_one_call(store: Store, ledger: Ledger, tenant: str) -> None:
    flight = SingleFlight(store, ledger=ledger)
    calls: list[int] = []
    results: list[Any] = []
    n = 50

    def provider() -> dict[str, str]:
        calls.append(1)
        _wait_until(lambda: flight.engine.waiting() == n - 1, "the other 49 callers")
        return {"text": "one answer"}

    def caller() -> None:
        results.append(
            flight.call(
                "prompt-1",
                provider,
                scope={"tenant_id": tenant},
                model=MODEL,
                usage_of=_usage,
                tags={"feature": "faq"},
            )
        )

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1
    assert results == [{"text": "one answer"}] * n
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="dedup")
    assert len(rows) == n - 1
    expected = cost_usd(MODEL, USAGE.input_tokens, USAGE.output_tokens)
    assert expected is not None and expected > 0
    assert all(r["saved_usd"] == pytest.approx(expected) for r in rows)
    assert all(r["layer"] == "single_flight" and r["feature"] == "faq" for r in rows)
    assert all(r["cost_usd"] == 0 for r in rows)


def test_burst_of_50_tasks_makes_one_call(store: Store, ledger: Ledger, tenant: str) -> None:
    flight = SingleFlight(store, ledger=ledger)
    calls: list[int] = []
    n = 50

    async def provider() -> str:
        calls.append(1)
        while flight.engine.waiting() < n - 1:
            await asyncio.sleep(0.01)
        return "async answer"

    async def burst() -> list[str]:
        return await asyncio.gather(
            *(
                flight.acall(
                    "prompt-a",
                    provider,
                    scope={"tenant_id": tenant},
                    model=MODEL,
                    usage_of=_usage,
                )
                for _ in range(n)
            )
        )

    results = asyncio.run(burst())
    assert len(calls) == 1
    assert results == ["async answer"] * n
    ledger.flush()
    assert len(ledger.records(tenant_id=tenant, kind="dedup")) == n - 1


def test_threads_and_tasks_share_one_flight(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        _wait_until(lambda: flight.engine.waiting() == 10, "the async callers")
        return "shared"

    leader = threading.Thread(
        target=lambda: flight.call("k", provider, scope={"tenant_id": tenant})
    )
    leader.start()
    _wait_until(lambda: len(calls) == 1, "the leader's call")

    async def late() -> list[str]:
        async def never() -> str:
            raise AssertionError("a waiter must not call the provider")

        return await asyncio.gather(
            *(flight.acall("k", never, scope={"tenant_id": tenant}) for _ in range(10))
        )

    assert asyncio.run(late()) == ["shared"] * 10
    leader.join(60)
    assert len(calls) == 1


def test_different_tenants_never_share(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    gate = threading.Event()
    answers: dict[str, str] = {}

    def run(who: str) -> None:
        def provider() -> str:
            gate.wait(30)
            return f"answer for {who}"

        answers[who] = flight.call("same prompt", provider, scope={"tenant_id": who})

    threads = [threading.Thread(target=run, args=(f"{tenant}-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    _wait_until(lambda: flight.stats.calls == 0 and len(flight.engine._flights) == 2, "2 flights")
    gate.set()
    for t in threads:
        t.join(60)
    assert answers == {f"{tenant}-{i}": f"answer for {tenant}-{i}" for i in range(2)}


def test_a_finished_answer_is_not_served_to_a_later_request(store: Store, tenant: str) -> None:
    """Single-flight is not a cache: a request after the flight ended calls again."""
    flight = SingleFlight(store)
    calls: list[int] = []

    def provider() -> int:
        calls.append(1)
        return len(calls)

    assert flight.call("k", provider, scope={"tenant_id": tenant}) == 1
    assert flight.call("k", provider, scope={"tenant_id": tenant}) == 2
    other = SingleFlight(store)  # another process's view: the stored row is not fresh
    assert other.call("k", provider, scope={"tenant_id": tenant}) == 3


def test_leader_error_reaches_local_waiters_once(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    calls: list[int] = []
    errors: list[BaseException] = []

    def provider() -> str:
        calls.append(1)
        _wait_until(lambda: flight.engine.waiting() == 4, "4 waiters")
        raise RuntimeError("provider down")

    def caller() -> None:
        try:
            flight.call("k", provider, scope={"tenant_id": tenant})
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1
    assert len(errors) == 5
    # the lock was released: the next call leads again
    assert flight.call("k", lambda: "ok", scope={"tenant_id": tenant}) == "ok"


def test_store_down_degrades_to_in_process(tenant: str, tmp_path: Path) -> None:
    store = Store.__new__(Store)  # a store whose database is gone
    from sqlalchemy import create_engine

    store.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    store.display_url = "postgresql://127.0.0.1:1/none"
    flight = SingleFlight(store)
    before = diagnostics.get("single_flight_store_failure")
    assert flight.call("k", lambda: "direct", scope={"tenant_id": tenant}) == "direct"
    assert diagnostics.get("single_flight_store_failure") == before + 1
    assert flight.stats.calls == 1


_WORKER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from pathlib import Path
    from sqlalchemy import text
    from graphthrift import Ledger, Store
    from graphthrift.resilience import SingleFlight
    from graphthrift.ledger import Usage

    tenant, calls_file, go_file, nproc = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
    ledger = Ledger(store, flush_interval=0.05)
    flight = SingleFlight(store, ledger=ledger, poll_interval=0.02)

    def pollers():
        with store.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND query = 'SELECT pg_try_advisory_lock($1)'")).scalar()

    def provider():
        with calls_file.open("a") as f:
            f.write(f"{os.getpid()}\\n")
        deadline = time.time() + 60
        while pollers() < nproc - 1 and time.time() < deadline:
            time.sleep(0.02)
        return {"text": "cross-process answer"}

    out = []
    def caller():
        out.append(flight.call("burst", provider, scope={"tenant_id": tenant},
                               model="gpt-4o-mini", usage_of=lambda a: Usage(1000, 200)))
    print("ready", flush=True)
    while not go_file.exists():
        time.sleep(0.005)
    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads: t.start()
    for t in threads: t.join()  # every caller answers: a slow one must not drop out of `out`
    ledger.close()
    print(json.dumps(out), flush=True)
    """
)


def test_burst_across_processes_makes_one_call(
    store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    nproc = 3
    calls_file = tmp_path / "calls"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, tenant, str(calls_file), str(go), str(nproc)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(nproc)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        go.touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    answers = [a for out, _ in outputs for a in json.loads(out.strip().splitlines()[-1])]
    # a caller thread that raised leaves no answer: its traceback is in its process's stderr
    errors = "\n".join(err[-3000:] for _, err in outputs if err.strip())
    assert answers == [{"text": "cross-process answer"}] * (10 * nproc), errors
    assert len(calls_file.read_text().split()) == 1
    rows = ledger.records(tenant_id=tenant, kind="dedup")
    assert len(rows) == 10 * nproc - 1
    sources = {r["extra"]["source"] for r in rows}
    assert sources == {"local", "store"}
    with store.connect() as conn:
        kept = conn.execute(
            text("SELECT count(*) FROM graphthrift_flights WHERE tenant_id = :t"), {"t": tenant}
        ).scalar()
    assert kept == 1
