"""Idempotent tools: a side-effecting tool runs at most once per key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from sqlalchemy import text

from graphthrift import Ledger, Store
from graphthrift.errors import ToolCallInProgress
from graphthrift.langgraph import idempotent_tool
from graphthrift.middleware import IdempotentToolMiddleware
from graphthrift.resilience import ToolIdempotency, derive_tool_key


def test_second_run_with_same_key_returns_stored_result(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    guard = ToolIdempotency(store, ledger=ledger)
    payments: list[int] = []

    def pay() -> dict[str, Any]:
        payments.append(118)
        return {"receipt": f"r-{len(payments)}"}

    first = guard.run("pay-118", pay, tool="pay", tenant_id=tenant)
    again = guard.run("pay-118", pay, tool="pay", tenant_id=tenant)
    assert first == again == {"receipt": "r-1"}
    assert payments == [118]
    other_tenant = guard.run("pay-118", pay, tool="pay", tenant_id=tenant + "-b")
    assert other_tenant == {"receipt": "r-2"}
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="dedup")
    assert row["layer"] == "idempotent_tool" and row["extra"]["tool"] == "pay"


def test_failed_tool_releases_its_claim(store: Store, tenant: str) -> None:
    guard = ToolIdempotency(store)
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("mail server down")
        return "sent"

    with pytest.raises(ConnectionError):
        guard.run("mail-1", flaky, tool="mail", tenant_id=tenant)
    assert guard.run("mail-1", flaky, tool="mail", tenant_id=tenant) == "sent"
    assert guard.run("mail-1", flaky, tool="mail", tenant_id=tenant) == "sent"
    assert len(attempts) == 2


def test_concurrent_repeats_run_once(store: Store, tenant: str) -> None:
    guard = ToolIdempotency(store, poll_interval=0.01)
    runs: list[int] = []
    gate = threading.Event()
    results: list[str] = []

    def slow() -> str:
        runs.append(1)
        gate.wait(30)
        return "done once"

    def repeat() -> None:
        results.append(guard.run("k", slow, tool="slow", tenant_id=tenant))

    threads = [threading.Thread(target=repeat) for _ in range(10)]
    for t in threads:
        t.start()
    while not runs:
        gate.wait(0.01)
    gate.set()
    for t in threads:
        t.join(60)
    assert runs == [1]
    assert results == ["done once"] * 10


def _claim_as_dead_process(store: Store, key: str, tenant: str, lease: str) -> None:
    digest = ToolIdempotency._hash(key, tenant)
    with store.connect() as conn:
        conn.execute(
            text(
                "INSERT INTO graphthrift_tool_claims (key_hash, tenant_id, tool, status, owner,"
                " lease_until, expires_at) VALUES (:k, :t, 'pay', 'running', 'dead-worker',"
                f" now() + interval '{lease}', now() + interval '1 day')"
            ),
            {"k": digest, "t": tenant},
        )


def test_stale_claim_is_taken_over(store: Store, tenant: str) -> None:
    _claim_as_dead_process(store, "pay-9", tenant, "-1 second")
    guard = ToolIdempotency(store)
    assert guard.run("pay-9", lambda: "paid", tool="pay", tenant_id=tenant) == "paid"
    assert guard.runs == 1


def test_live_claim_is_not_run_twice(store: Store, tenant: str) -> None:
    _claim_as_dead_process(store, "pay-10", tenant, "10 minutes")
    guard = ToolIdempotency(store, wait_timeout=0.3, poll_interval=0.05)
    with pytest.raises(ToolCallInProgress) as err:
        guard.run("pay-10", lambda: "paid twice", tool="pay", tenant_id=tenant)
    assert err.value.tool == "pay" and err.value.key == "pay-10"
    assert err.value.waited_s >= 0.3 and err.value.lease_left_s > 500
    assert guard.runs == 0


def test_result_past_ttl_runs_again(store: Store, tenant: str) -> None:
    guard = ToolIdempotency(store, ttl_s=3600)
    assert guard.run("k", lambda: 1, tool="t", tenant_id=tenant) == 1
    with store.connect() as conn:
        conn.execute(
            text(
                "UPDATE graphthrift_tool_claims SET expires_at = now() - interval '1 second'"
                " WHERE tenant_id = :t"
            ),
            {"t": tenant},
        )
    assert guard.run("k", lambda: 2, tool="t", tenant_id=tenant) == 2


_CRASHER = textwrap.dedent(
    """
    import os, sys, time
    from graphthrift import Store
    from graphthrift.resilience import ToolIdempotency

    store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
    guard = ToolIdempotency(store, lease_s=1.0)

    def pay():
        print("paying", flush=True)
        time.sleep(600)

    guard.run("pay-crash", pay, tool="pay", tenant_id=sys.argv[1])
    """
)


def test_claim_of_a_killed_process_is_taken_over_after_its_lease(store: Store, tenant: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHER, tenant],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "paying", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        guard = ToolIdempotency(store, wait_timeout=60, poll_interval=0.05)
        assert guard.run("pay-crash", lambda: "paid here", tool="pay", tenant_id=tenant) == (
            "paid here"
        )
        assert guard.runs == 1
    finally:
        if proc.poll() is None:
            proc.kill()


def test_derived_key_ignores_argument_order() -> None:
    assert derive_tool_key("t1", "pay", {"a": 1, "b": 2}) == derive_tool_key(
        "t1", "pay", {"b": 2, "a": 1}
    )
    assert derive_tool_key("t1", "pay", {"a": 1}) != derive_tool_key("t2", "pay", {"a": 1})


# -- inside agents -------------------------------------------------------------------------


class ToolCallingFake(GenericFakeChatModel):
    """The fake chat model, able to ``bind_tools`` (create_agent binds the agent's tools)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def _pay_agent(side_effects: list[str], middleware: list[Any], wrap: Any = None) -> Any:
    @tool
    def pay_invoice(invoice: str, amount: float) -> str:
        """Pay an invoice."""
        side_effects.append(invoice)
        return f"paid {invoice} ({amount}), receipt {len(side_effects)}"

    pay = wrap(pay_invoice) if wrap else pay_invoice
    model = ToolCallingFake(
        messages=iter(
            [
                AIMessage(
                    "",
                    tool_calls=[
                        {
                            "name": "pay_invoice",
                            "args": {"invoice": "INV-118", "amount": 42.0},
                            "id": "call-1",
                        }
                    ],
                ),
                AIMessage("Paid."),
                AIMessage("Paid."),
            ]
        )
    )
    return create_agent(model, [pay], middleware=middleware, checkpointer=InMemorySaver())


def _replay_tools_step(agent: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Re-run the graph from the checkpoint taken just before the tool ran."""
    before = next(s for s in agent.get_state_history(config) if s.next == ("tools",))
    return agent.invoke(None, {**before.config, "metadata": config["metadata"]})  # type: ignore[no-any-return]


@pytest.mark.parametrize("adapter", ["middleware", "wrapper"])
def test_replay_from_checkpoint_does_not_pay_twice(store: Store, tenant: str, adapter: str) -> None:
    guard = ToolIdempotency(store)
    paid: list[str] = []
    if adapter == "middleware":
        agent = _pay_agent(paid, [IdempotentToolMiddleware(guard, tools=["pay_invoice"])])
    else:
        agent = _pay_agent(paid, [], wrap=lambda t: idempotent_tool(t, guard))
    config = {
        "configurable": {"thread_id": f"thread-{uuid.uuid4().hex}"},
        "metadata": {"tenant_id": tenant},
    }
    first = agent.invoke({"messages": [HumanMessage("Pay INV-118")]}, config)
    replay = _replay_tools_step(agent, config)
    assert paid == ["INV-118"]
    first_tool = [m for m in first["messages"] if isinstance(m, ToolMessage)]
    replay_tool = [m for m in replay["messages"] if isinstance(m, ToolMessage)]
    assert first_tool[-1].content == replay_tool[-1].content == "paid INV-118 (42.0), receipt 1"
    assert replay_tool[-1].tool_call_id == "call-1"
    assert len(replay_tool) == 1


def test_middleware_needs_the_tools_to_guard(store: Store) -> None:
    with pytest.raises(ValueError, match="side-effecting"):
        IdempotentToolMiddleware(ToolIdempotency(store), tools=[])


def test_unguarded_agent_pays_twice_on_replay(store: Store, tenant: str) -> None:
    """The control: without the guard, the same replay repeats the side effect."""
    paid: list[str] = []
    agent = _pay_agent(paid, [])
    config = {
        "configurable": {"thread_id": f"thread-{uuid.uuid4().hex}"},
        "metadata": {"tenant_id": tenant},
    }
    agent.invoke({"messages": [HumanMessage("Pay INV-118")]}, config)
    _replay_tools_step(agent, config)
    assert paid == ["INV-118", "INV-118"]
