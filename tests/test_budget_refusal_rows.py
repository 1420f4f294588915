"""Every refusal a budget makes is one ``kind="refusal"`` ledger row that alerts count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from sqlalchemy import text

from graphthrift import Ledger, Store
from graphthrift.budget import Budget
from graphthrift.errors import BudgetExceeded
from graphthrift.langgraph.budget import BudgetState, enforce_budget, route_on_budget
from graphthrift.ledger import LedgerRecord
from graphthrift.middleware.budget import BudgetMiddleware, ToolBudgetMiddleware
from graphthrift.ops.alerts import AlertRules, check_alerts

from fakes import usage_model

MODEL = "gpt-4o-mini"


def _rows(store: Store, ledger: Ledger, tenant: str) -> list[Any]:
    ledger.flush()
    with store.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT kind, tenant_id, feature, route, thread_id, run_id, node, extra"
                    " FROM graphthrift_ledger WHERE tenant_id = :t AND kind = 'refusal' ORDER BY ts"
                ),
                {"t": tenant},
            )
        )


def _spent(store: Store, ledger: Ledger, tenant: str, **limits: Any) -> Budget:
    budget = Budget(store, ledger=ledger, max_output_tokens=200, **limits)
    r = budget.reserve(MODEL, input_tokens=1, max_output_tokens=1, tags={"tenant_id": tenant})
    budget.settle(r, input_tokens=590, output_tokens=0)
    return budget


def test_langgraph_guard_refusal_is_one_row_with_the_run_tags(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    budget = _spent(store, ledger, tenant, max_tokens={"tenant": 600})
    guard = enforce_budget(budget, model=MODEL)
    llm = usage_model("Here you go.", input_tokens=40, output_tokens=20)
    builder = StateGraph(BudgetState)
    builder.add_node("guard", guard.guard)
    builder.add_node("model", lambda s: {"messages": [llm.invoke(s["messages"])]})
    builder.add_edge(START, "guard")
    builder.add_conditional_edges("guard", route_on_budget("model"))
    builder.add_edge("model", END)
    graph = builder.compile()
    config: Any = {
        "metadata": {"tenant_id": tenant, "feature": "faq", "route": "strong"},
        "configurable": {"thread_id": "t-1"},
        "run_id": "6f1c2d3e-0000-4000-8000-000000000001",
    }
    out = graph.invoke({"messages": [HumanMessage("more")]}, config)
    assert out["budget_status"] == "ended"
    rows = _rows(store, ledger, tenant)
    assert len(rows) == 1
    row = rows[0]
    assert (row.tenant_id, row.feature, row.route, row.thread_id, row.node) == (
        tenant,
        "faq",
        "strong",
        "t-1",
        "guard",
    )
    assert row.run_id and row.extra["limit"] == "max_tokens"


def test_budget_middleware_refusals_end_or_raise_and_each_is_one_row(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    budget = _spent(store, ledger, tenant, max_tokens={"tenant": 600})
    model = usage_model("Sure.", input_tokens=30, output_tokens=10)
    tags = {"tenant_id": tenant, "feature": "chat"}
    agent = create_agent(model, middleware=[BudgetMiddleware(budget)])
    out = agent.invoke({"messages": [HumanMessage("again")]}, {"metadata": tags})
    assert out["messages"][-1].response_metadata["graphthrift_budget"] == "max_tokens"
    hard = Budget(
        store, ledger=ledger, max_tokens={"tenant": 600}, max_output_tokens=200, ladder=()
    )
    with pytest.raises(BudgetExceeded):
        create_agent(model, middleware=[BudgetMiddleware(hard)]).invoke(
            {"messages": [HumanMessage("again")]}, {"metadata": tags}
        )
    rows = _rows(store, ledger, tenant)
    assert len(rows) == 2
    assert {r.feature for r in rows} == {"chat"} and all(r.run_id for r in rows)
    assert [r.extra["limit"] for r in rows] == ["max_tokens", "max_tokens"]


class _ToolFake(type(usage_model())):  # type: ignore[misc]
    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def test_tool_budget_refusals_are_rows(store: Store, ledger: Ledger, tenant: str) -> None:
    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return f"found {q}"

    first = AIMessage(
        "", tool_calls=[{"name": "lookup", "args": {"q": str(i)}, "id": f"c{i}"} for i in range(3)]
    )
    model = _ToolFake(messages=iter([first, AIMessage("done")]))
    budget = Budget(ledger=ledger, max_tool_calls_per_step=1)
    agent = create_agent(model, tools=[lookup], middleware=[ToolBudgetMiddleware(budget=budget)])
    agent.invoke({"messages": [HumanMessage("go")]}, {"metadata": {"tenant_id": tenant}})
    rows = _rows(store, ledger, tenant)
    assert len(rows) == 2
    assert {r.extra["limit"] for r in rows} == {"max_tool_calls_per_step"}
    assert all(r.node == "tools" for r in rows)


def test_llamaindex_refusal_is_one_row_and_alerts_count_them(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    from llama_index.core.llms import ChatMessage, MockLLM

    from graphthrift.llamaindex.budget import BudgetedLLM

    budget = _spent(store, ledger, tenant, max_tokens={"tenant": 600})
    llm = BudgetedLLM(
        llm=MockLLM(max_tokens=50),
        budget=budget,
        model=MODEL,
        tags={"tenant_id": tenant, "feature": "rag"},
    )
    now = datetime.now(UTC)
    # the feature's quiet past (served calls, no refusals) is the alert's baseline
    ledger.record(
        LedgerRecord(
            ts=now - timedelta(days=6, hours=2), tenant_id=tenant, feature="rag", cost_usd=0.01
        )
    )
    for _ in range(5):
        with pytest.raises(BudgetExceeded):
            llm.chat([ChatMessage(role="user", content="more")])
    rows = _rows(store, ledger, tenant)
    assert len(rows) == 5 and {r.feature for r in rows} == {"rag"}
    alerts = check_alerts(
        store,
        rules=AlertRules(dimensions=("feature",)),
        since=now - timedelta(hours=1),
        until=now + timedelta(hours=1),
        tenant_id=tenant,
        only=("refusals",),
    )
    assert [a.figure for a in alerts if a.rule == "refusals"] == [5.0]


def test_a_failing_ledger_never_changes_the_refusal(store: Store, tenant: str) -> None:
    class Broken:
        def record(self, record: Any) -> None:
            raise RuntimeError("ledger down")

    budget = Budget(store, ledger=Broken(), max_tokens={"tenant": 100}, ladder=())  # type: ignore[arg-type]
    with pytest.raises(BudgetExceeded):
        budget.reserve(MODEL, input_tokens=500, tags={"tenant_id": tenant})
