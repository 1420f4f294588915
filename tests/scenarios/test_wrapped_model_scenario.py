"""Composed scenario: ``wrap_model`` in a hand-written LangGraph tool loop, every layer on.

    START -> agent (wrap_model(strong, cache, compressor, cheap_model, budget).bind_tools)
          -> tools (ToolNode) -> agent ... -> END

The one changed line is the model: ``wrap_model(...)`` around the strong model, with a
``SemanticCache``, an ``ExtractiveCompressor`` for retrieved policy text, the cheap model
first (the router escalates its hedged refunds) and a ``Budget`` per thread and tenant.
Two tenants x two users x two threads of seeded conversations over invoke,
``stream(stream_mode="messages")`` and ``astream`` (the async ones concurrently with the
sync ones), one ``InMemorySaver``. The run happens once per module; each test checks one
invariant family on every turn.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest_asyncio
from langchain_core.messages import BaseMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from scenario_kit import (
    CHEAP,
    STRONG,
    ScenarioRun,
    World,
    boundary_violations,
    conversation,
    first,
    history_violations,
    latest_human_index,
    plan_threads,
    play_scenario,
    support_reply,
    support_tools,
    tool_pair_problems_of,
    written_by_graphthrift,
)

from graphthrift import Budget, ExtractiveCompressor, Ledger, SemanticCache, wrap_model

from fakes import CallLog, RecordingChatModel

TURNS = 12
THREADS = 2
POLICY_Q = "What is the returns policy?"
FILLER = (
    "Our stores carry a wide range of household goods and seasonal items. "
    "Gift cards never expire and can be used in every branch. "
    "Staff are trained to help with assembly questions in person. "
    "Parking is free for customers during opening hours. "
    "Newsletter subscribers hear about promotions first. "
)


def return_days(tenant: str) -> int:
    return 14 + len(tenant) % 7 * 4 if tenant.startswith("acme") else 45


def _policy(tenant: str) -> str:
    key = f"Items can be returned within {return_days(tenant)} days of delivery for a refund."
    return FILLER * 3 + key + " " + FILLER * 3


def _reply(messages: Sequence[BaseMessage], model: str) -> Any:
    at = latest_human_index(messages)
    if at >= 0 and str(messages[at].content).strip() == POLICY_Q:
        results = [str(m.content) for m in messages[at + 1 :] if isinstance(m, ToolMessage)]
        if not results:
            return "", [("search_policy", {"topic": "returns"})]
        found = re.search(r"returned within (\d+) days", results[-1])
        return (f"Returns: within {found.group(1)} days." if found else "No policy found."), []
    return support_reply(messages, model)


def _tools(world: World) -> list[Any]:
    """The support agent scenario's order tools, plus a policy search with long results."""

    @tool
    def search_policy(topic: str, config: RunnableConfig) -> str:
        """The tenant's policy documents about a topic."""
        return _policy((config.get("metadata") or {})["tenant_id"])

    return [*support_tools(world), search_policy]


Run = ScenarioRun


def build_graph(world: World, store: Any, ledger: Ledger, log: CallLog) -> tuple[Any, Budget]:
    strong = RecordingChatModel(model_name=STRONG, reply=_reply, log=log)
    cheap = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    budget = Budget(store, max_tokens={"thread": 40_000, "tenant": 400_000}, max_output_tokens=200)
    tools = _tools(world)
    model = wrap_model(  # the one changed line: was `strong`
        strong,
        cache=SemanticCache(
            store, namespace=f"wrapped-{world.tenants[0]}", ledger=ledger, timeout=5
        ),
        compressor=ExtractiveCompressor(target_ratio=0.3, ledger=ledger),
        cheap_model=cheap,
        budget=budget,
        ledger=ledger,
    ).bind_tools(tools)

    def prompt(state: MessagesState, config: RunnableConfig) -> list[BaseMessage]:
        tenant = (config.get("metadata") or {})["tenant_id"]
        return [SystemMessage(world.system_prompt(tenant)), *state["messages"]]

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(prompt(state, config))]}

    async def aagent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(prompt(state, config))]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", RunnableLambda(agent, afunc=aagent))
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver()), budget


def _questions(rng: random.Random) -> list[str]:
    questions = conversation(rng, TURNS)
    questions.insert(1 + rng.randrange(len(questions) - 1), POLICY_Q)
    return questions


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def wrapped_run(store: Any) -> AsyncIterator[Run]:
    world = World.make(n_users=2)
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    graph, budget = build_graph(world, store, ledger, log)
    rng = random.Random(20261130)
    plans = plan_threads(world, THREADS, "w", lambda: _questions(rng))
    yield await play_scenario(graph, Run(world, log, ledger, budget), plans)
    ledger.close()


def test_every_turn_completes(wrapped_run: Run) -> None:
    errors = [f"{t.where()}: {t.error}" for t in wrapped_run.turns if t.error]
    assert not errors, first(errors)
    missing = [t.where() for t in wrapped_run.turns if t.answer is None]
    assert not missing, first(missing)
    assert len(wrapped_run.turns) == 2 * 2 * THREADS * (TURNS + 1)


def test_answers_stay_with_their_tenant_user_and_thread(wrapped_run: Run) -> None:
    problems = [p for t in wrapped_run.turns for p in boundary_violations(t, wrapped_run.world)]
    problems += [p for t in wrapped_run.turns for p in history_violations(t)]
    assert not problems, first(problems)
    assert any("account=" in str(t.answer.content) for t in wrapped_run.turns if t.answer)


def test_repeated_questions_hit_the_cache_and_are_booked_once(wrapped_run: Run) -> None:
    hits = [t for t in wrapped_run.turns if t.served_from_cache]
    assert hits, "no turn was served from the cache"
    problems = [f"{t.where()}: a hit called the model" for t in hits if t.calls]
    assert not problems, first(problems)
    rows = [
        r
        for tenant in wrapped_run.world.tenants
        for r in wrapped_run.ledger.records(tenant_id=tenant)
    ]
    llm = [r for r in rows if r["kind"] == "llm"]
    assert len(llm) == len(wrapped_run.log.calls)  # one row per real call, none per hit
    assert len([r for r in rows if r["kind"] == "cache_hit"]) == len(hits)
    assert {r["node"] for r in llm} == {"agent"}


def test_graphthrift_answers_are_never_served_from_the_cache(wrapped_run: Run) -> None:
    bad = [
        t.where()
        for t in wrapped_run.turns
        for m in t.served_from_cache
        if written_by_graphthrift(m) or "not sure" in str(m.content)
    ]
    assert not bad, first(bad)


def test_hedged_refunds_escalate_to_the_strong_model(wrapped_run: Run) -> None:
    refunds = [t for t in wrapped_run.turns if t.question.startswith("Please refund") and t.calls]
    assert refunds
    problems = [
        f"{t.where()}: {t.answer.content!r}"
        for t in refunds
        if t.answer is not None and not str(t.answer.content).startswith("Refund of")
    ]
    assert not problems, first(problems)
    assert all(any(c["model"] == STRONG for c in t.calls) for t in refunds)
    assert any(c["model"] == CHEAP for t in wrapped_run.turns for c in t.calls)


def test_retrieved_policy_is_compressed_and_still_answers(wrapped_run: Run) -> None:
    policy = [t for t in wrapped_run.turns if t.question == POLICY_Q]
    assert policy
    wrong = [
        f"{t.where()}: {t.answer.content!r}"
        for t in policy
        if t.answer is not None
        and str(t.answer.content) != f"Returns: within {return_days(t.tenant)} days."
    ]
    assert not wrong, first(wrong)
    sent = [
        str(m.content)
        for t in policy
        for c in t.calls
        for m in c["messages"]
        if isinstance(m, ToolMessage) and "returned within" in str(m.content)
    ]
    assert sent and all(len(s) < len(_policy(wrapped_run.world.tenants[0])) / 2 for s in sent)
    rows = wrapped_run.ledger.records(tenant_id=wrapped_run.world.tenants[0])
    assert any(r["kind"] == "compression" for r in rows)


def test_prompts_keep_tool_pairs(wrapped_run: Run) -> None:
    problems = tool_pair_problems_of(wrapped_run.turns)
    assert not problems, first(problems)


def test_budget_settles_every_call_at_its_usage(wrapped_run: Run) -> None:
    for tenant in wrapped_run.world.tenants:
        calls = wrapped_run.log.of(tenant_id=tenant)
        spent = wrapped_run.budget.usage({"tenant_id": tenant})["tenant"]
        tokens = sum(c["usage"]["input_tokens"] + c["usage"]["output_tokens"] for c in calls)
        assert spent["spent_tokens"] == tokens
        assert spent["reserved_tokens"] == 0
        assert spent["calls"] == len(calls)
