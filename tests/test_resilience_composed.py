"""The resilience layer composed with the ledger's CostTagger and budgets in real agents:
every provider call is booked once, every waiter once as a saving, and a waiter never
spends budget."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage, HumanMessage

from graphthrift import Budget, Ledger, Store
from graphthrift.langchain.callbacks import CostTagger
from graphthrift.middleware import BudgetMiddleware, ResilienceMiddleware
from graphthrift.resilience import Retrier, RetryBudget, SingleFlight

from fakes import RateLimitError, UsageFakeChatModel, flaky_model


class SlowFlaky(UsageFakeChatModel):
    """Rate-limited once, then answers once ``gate()`` holds."""

    errors: list[Exception] = []  # noqa: RUF012 - a pydantic field
    calls: list[int] = []  # noqa: RUF012
    gate: Any = None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls.append(1)
        if self.errors:
            raise self.errors.pop(0)
        deadline = time.monotonic() + 60
        while self.gate is not None and not self.gate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_waiters_are_booked_once_and_spend_no_budget(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    base = flaky_model(input_tokens=500, output_tokens=40)
    model = SlowFlaky(
        messages=base.messages,
        usage=base.usage,
        model_name=base.model_name,
        errors=[RateLimitError("429")],
    )
    flight = SingleFlight(store, ledger=ledger)
    model.gate = lambda: flight.engine.waiting() == 5
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=100)
    retrier = Retrier(
        budget=RetryBudget(store, min_retries=2, window_s=300),
        sleep=lambda _: None,
        ledger=ledger,
    )
    agent = create_agent(
        model,
        tools=[],
        middleware=[ResilienceMiddleware(flight, retrier=retrier), BudgetMiddleware(budget)],
    )
    config = {"metadata": {"tenant_id": tenant}, "callbacks": [CostTagger(ledger)]}
    outputs: list[str] = []

    def run() -> None:
        out = agent.invoke({"messages": [HumanMessage("How do I freeze my card?")]}, config)
        outputs.append(out["messages"][-1].content)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outputs) == 6 and len(set(outputs)) == 1
    assert len(model.calls) == 2  # the rate-limited attempt and its one retry
    ledger.flush()
    llm = ledger.records(tenant_id=tenant, kind="llm")
    assert sorted(r["success"] for r in llm) == [False, True]  # one row per provider call
    dedup = ledger.records(tenant_id=tenant, kind="dedup")
    assert len(dedup) == 5
    ok = next(r for r in llm if r["success"])
    assert all(r["saved_usd"] == ok["cost_usd"] for r in dedup)  # what each waiter saved
    (retry,) = ledger.records(tenant_id=tenant, kind="retry")
    assert retry["error_type"] == "rate_limit"
    spent = budget.usage({"tenant_id": tenant})["tenant"]
    assert spent["spent_usd"] == pytest.approx(ok["cost_usd"])  # the waiters spent nothing
    assert spent["calls"] == 2  # the leader's two attempts reserved; no waiter did
