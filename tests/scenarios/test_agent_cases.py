"""Composed ``create_agent`` cases, each the minimal conversation of one issue-11 item,
inside the same support agent and world as ``test_agent_scenario``."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.tools import tool
from scenario_kit import (
    BUDGET_STOP,
    CHEAP,
    STRONG,
    World,
    first,
    latest_human_index,
    prompt_problems,
    support_agent,
    support_reply,
    support_tools,
    tool_pair_problems,
)

from graphthrift import Budget, CostTagger, ExactCache, Ledger, Router, SemanticCache
from graphthrift.middleware import (
    BudgetMiddleware,
    HistoryPruningMiddleware,
    ModelRoutingMiddleware,
    SemanticCacheMiddleware,
)

from fakes import CallLog, RecordingChatModel

TRACK = "Please keep tracking order A-105 until it is delivered."


def _reply(messages: list[BaseMessage], model: str) -> Any:
    at = latest_human_index(messages)
    if at >= 0 and messages[at].content == TRACK:
        results = [m for m in messages[at + 1 :] if m.type == "tool"]
        if not results or "delivered" not in str(results[-1].content):
            return "", [("track_order", {"order_id": "A-105"})]
        return f"Order A-105 is delivered: {results[-1].content}", []
    return support_reply(messages, model)


def _agent(world: World, log: CallLog, middleware: list[Any]) -> Any:
    cheap = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    hops = {"n": 0}

    @tool
    def track_order(order_id: str) -> str:
        """The latest tracking event of an order."""
        hops["n"] += 1
        state = "delivered" if hops["n"] >= 10 else "in transit"
        return (
            f"order={order_id}; status={state}; checkpoint={hops['n']}; "
            + "carrier scan at regional hub, parcel sorted and loaded onto the next truck. " * 6
        )

    return support_agent(world, cheap, [*support_tools(world), track_order], middleware)


def _ask(agent: Any, tenant: str, user: str, thread: str, question: str, **extra: Any) -> Any:
    config: dict[str, Any] = {
        "configurable": {"thread_id": thread},
        "metadata": {"tenant_id": tenant, "user_id": user, **extra.pop("metadata", {})},
        **extra,
    }
    out = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
    return out["messages"][-1]


def test_per_run_budget_is_per_run(store: Any) -> None:
    world, log = World.make(), CallLog()
    budget = Budget(store, max_tokens={"run": 400}, max_output_tokens=100)
    agent = _agent(world, log, [BudgetMiddleware(budget)])
    answers = []
    for i in range(12):  # each run spends a few hundred tokens, far below its own limit
        tenant = world.tenants[i % 2]
        answers.append(_ask(agent, tenant, "alice0", f"run-{uuid.uuid4().hex}", "Thanks!"))
    stops = [a.content for a in answers if str(a.content).startswith(BUDGET_STOP)]
    assert log.calls and max(c["usage"]["total_tokens"] for c in log.calls) < 150
    assert not stops, first(stops)


def test_long_tool_loop_keeps_the_request_and_tool_pairs(store: Any) -> None:
    world, log = World.make(), CallLog()
    agent = _agent(world, log, [HistoryPruningMiddleware(max_tokens=1500, model=CHEAP)])
    tenant = world.tenants[0]
    for q in ("Where is my order A-101?", "Please refund order A-102.", "When are you open?"):
        _ask(agent, tenant, "alice0", "long-loop", q)
    before = len(log.calls)
    answer = _ask(agent, tenant, "alice0", "long-loop", TRACK)
    calls = log.calls[before:]
    problems = [p for c in calls for p in prompt_problems(c, TRACK)]
    problems += [p for c in calls for p in tool_pair_problems(c["messages"])]
    assert not problems, first(problems)
    assert len(calls) == 11  # ten tool round-trips, then the answer
    assert "delivered" in str(answer.content)


def test_semantic_near_miss_does_not_change_the_meaning(store: Any, ledger: Ledger) -> None:
    world, log = World.make(), CallLog()
    cache = SemanticCache(store, namespace=f"days-{uuid.uuid4().hex[:8]}", ledger=ledger, timeout=5)
    agent = _agent(world, log, [SemanticCacheMiddleware(cache)])
    tenant = world.tenants[0]
    rng = random.Random(7)
    wrong = []
    days = ["Sunday", "Monday", "Saturday", "Tuesday"]
    for i in range(8):
        day = rng.choice(days)
        answer = str(
            _ask(agent, tenant, f"user{i}", f"days-{i}", f"Is the store open on {day}?").content
        )
        if f"On {day} " not in answer:
            wrong.append(f"asked about {day}, answered {answer!r}")
    assert not wrong, first(wrong)


def test_cached_tool_turn_is_replayed_faithfully_or_refused(store: Any, ledger: Ledger) -> None:
    world, log = World.make(), CallLog()
    namespace = f"tools-{uuid.uuid4().hex[:8]}"
    try:
        cache = ExactCache(store, namespace=namespace, ledger=ledger, cache_tool_calls=True)
        agent = _agent(world, log, [SemanticCacheMiddleware(cache)])
    except (TypeError, ValueError):
        return  # refusing the option with a clear error is the other correct behaviour
    tenant = world.tenants[0]
    answers = [
        str(_ask(agent, tenant, "alice0", f"tools-{i}", "Where is my order A-101?").content)
        for i in range(2)
    ]
    expected = world.order_status(tenant, "alice0", "A-101")
    assert all(expected in a for a in answers), answers


def test_budget_outside_the_router_books_every_routed_call(store: Any, ledger: Ledger) -> None:
    world, log = World.make(), CallLog()
    cheap = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    strong = RecordingChatModel(model_name=STRONG, reply=_reply, log=log)
    budget = Budget(store, max_usd={"thread": 5.0}, max_output_tokens=200)
    router = Router(cheap=CHEAP, strong=STRONG, ledger=ledger, threshold=0.95)
    agent = _agent(
        world,
        log,
        [
            BudgetMiddleware(budget),
            ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong),
        ],
    )
    tenant, thread = world.tenants[0], f"esc-{uuid.uuid4().hex[:8]}"
    tagger = CostTagger(ledger)
    _ask(agent, tenant, "alice0", thread, "Please refund order A-101.", callbacks=[tagger])
    assert {c["model"] for c in log.calls} == {CHEAP, STRONG}  # it did escalate
    ledger.flush()
    spent = sum(r["cost_usd"] for r in ledger.records(tenant_id=tenant, kind="llm"))
    row = budget.usage({"tenant_id": tenant, "thread_id": thread})["thread"]
    assert row["spent_usd"] == pytest.approx(spent, abs=1e-9)


def test_budget_behind_the_router_prices_models_that_name_no_model(store: Any) -> None:
    world, log = World.make(), CallLog()
    # deployments named only by the router (as an Azure deployment or a custom model is)
    cheap = RecordingChatModel(model_name="", reply=_reply, log=log)
    strong = RecordingChatModel(model_name="", reply=_reply, log=log)
    budget = Budget(store, max_usd={"thread": 5.0}, max_output_tokens=200)
    router = Router(cheap=CHEAP, strong=STRONG, threshold=0.95)
    agent = _agent(
        world,
        log,
        [
            ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong),
            BudgetMiddleware(budget),
        ],
    )
    tenant, thread = world.tenants[0], f"nameless-{uuid.uuid4().hex[:8]}"
    answer = _ask(agent, tenant, "alice0", thread, "When are you open?")
    assert "support desk is open" in str(answer.content)
    row = budget.usage({"tenant_id": tenant, "thread_id": thread})["thread"]
    assert row["spent_usd"] > 0 and row["reserved_usd"] == 0
