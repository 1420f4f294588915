"""Composed scenario: a ``create_agent`` support agent with the whole graphthrift stack.

Two tenants x three users x two threads, 30 seeded turns each, over ``invoke``,
``stream(stream_mode="messages")`` and ``astream`` on one ``InMemorySaver``. The stack, in
the README's order (outermost first):

    tenant_prompt (dynamic_prompt)  -> the system prompt the cache key fingerprints
    SemanticCacheMiddleware         -> a hit skips everything below
    HistoryPruningMiddleware        -> what is sent is what gets routed, reserved and paid
    ModelRoutingMiddleware                -> picks cheap or strong per call
    BudgetMiddleware                -> reserves the routed call at the model actually called
    ToolBudgetMiddleware            -> caps tool calls per step
    CostTagger (callback)           -> one ledger row per model call

The run happens once per module; each test checks one invariant family on every turn, so
an ``xfail`` for a known issue hides nothing else.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config
from scenario_kit import (
    CHEAP,
    STRONG,
    Turn,
    World,
    boundary_violations,
    conversation,
    first,
    history_violations,
    orders_in,
    price,
    prompt_problems,
    tool_pair_problems,
    written_by_graphthrift,
)

from graphthrift import Budget, CostTagger, Ledger, Router, SemanticCache, diagnostics
from graphthrift.middleware import (
    BudgetMiddleware,
    HistoryPruningMiddleware,
    ModelRoutingMiddleware,
    SemanticCacheMiddleware,
    ToolBudgetMiddleware,
)

from fakes import CallLog, RecordingChatModel

TURNS = 30
THREADS = 2
THREAD_TOKEN_LIMIT = 9_000
TENANT_TOKEN_LIMIT = 400_000
MAX_OUTPUT = 200
MODES = ("invoke", "stream", "astream")


def _tools(world: World) -> list[Any]:
    @tool
    def lookup_order(order_id: str, config: RunnableConfig) -> str:
        """The status and delivery date of one of the customer's orders."""
        md = config.get("metadata") or {}
        return world.order_status(md["tenant_id"], md["user_id"], order_id)

    @tool
    def refund_order(order_id: str, config: RunnableConfig) -> str:
        """Refund one of the customer's orders."""
        md = config.get("metadata") or {}
        return world.refund(md["tenant_id"], md["user_id"], order_id)

    return [lookup_order, refund_order]


def build_agent(world: World, store: Any, ledger: Ledger, log: CallLog) -> tuple[Any, Budget]:
    cheap = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    strong = RecordingChatModel(model_name=STRONG, reply=_reply, log=log)

    @dynamic_prompt
    def tenant_prompt(request: ModelRequest) -> str:
        return world.system_prompt(get_config()["metadata"]["tenant_id"])

    cache = SemanticCache(store, namespace=f"support-{world.tenants[0]}", ledger=ledger, timeout=5)
    budget = Budget(
        store,
        max_tokens={"thread": THREAD_TOKEN_LIMIT, "tenant": TENANT_TOKEN_LIMIT},
        max_output_tokens=MAX_OUTPUT,
    )
    router = Router(cheap=CHEAP, strong=STRONG, ledger=ledger, threshold=0.95)
    agent = create_agent(
        cheap,
        _tools(world),
        middleware=[
            tenant_prompt,
            SemanticCacheMiddleware(cache),
            HistoryPruningMiddleware(max_tokens=700, target_tokens=400, model=CHEAP),
            ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong),
            BudgetMiddleware(budget),
            ToolBudgetMiddleware(max_tool_calls_per_step=1),
        ],
        checkpointer=InMemorySaver(),
    )
    return agent, budget


def _reply(messages: Any, model: str) -> Any:
    from scenario_kit import support_reply

    return support_reply(messages, model)


class Run:
    """Everything one scenario run produced."""

    def __init__(self, world: World, log: CallLog, ledger: Ledger, budget: Budget) -> None:
        self.world = world
        self.log = log
        self.ledger = ledger
        self.budget = budget
        self.turns: list[Turn] = []


def _config(tenant: str, user: str, thread: str, tagger: CostTagger) -> dict[str, Any]:
    return {
        "configurable": {"thread_id": thread},
        "metadata": {"tenant_id": tenant, "user_id": user, "feature": "support"},
        "callbacks": [tagger],
    }


def _new_messages(agent: Any, config: dict[str, Any], before: int) -> list[Any]:
    state = agent.get_state(config)
    return list(state.values.get("messages", []))[before:]


def _prior(agent: Any, config: dict[str, Any]) -> int:
    return len(agent.get_state(config).values.get("messages", []))


def _drive_sync(agent: Any, mode: str, config: dict[str, Any], question: str) -> None:
    inputs = {"messages": [{"role": "user", "content": question}]}
    if mode == "invoke":
        agent.invoke(inputs, config)
    else:
        for _chunk in agent.stream(inputs, config, stream_mode="messages"):
            pass


async def _drive_async(agent: Any, config: dict[str, Any], question: str) -> None:
    inputs = {"messages": [{"role": "user", "content": question}]}
    async for _chunk in agent.astream(inputs, config):
        pass


def _turn(
    world: World, tenant: str, user: str, thread: str, i: int, mode: str, q: str, asked: list[str]
) -> Turn:
    return Turn(tenant, user, thread, i, mode, q, list(asked))


def _finish(
    turn: Turn, agent: Any, config: dict[str, Any], before: int, log: CallLog, n_calls: int
) -> None:
    turn.new_messages = _new_messages(agent, config, before)
    turn.calls = [c for c in log.of(thread_id=turn.thread)][n_calls:]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def agent_run(store: Any) -> AsyncIterator[Run]:
    world = World.make(n_users=3)
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    agent, budget = build_agent(world, store, ledger, log)
    tagger = CostTagger(ledger)
    rng = random.Random(20261130)
    run = Run(world, log, ledger, budget)
    plans: list[tuple[Any, ...]] = []
    for tenant in world.tenants:
        for user in world.users[tenant]:
            for t in range(THREADS):
                thread = f"{tenant}-{user}-t{t}"
                mode = MODES[len(plans) % len(MODES)]
                plans.append((tenant, user, thread, mode, conversation(rng, TURNS)))

    async_plans = [p for p in plans if p[3] == "astream"]
    sync_plans = [p for p in plans if p[3] != "astream"]

    def play_sync(plan: tuple[Any, ...]) -> None:
        tenant, user, thread, mode, questions = plan
        config = _config(tenant, user, thread, tagger)
        asked: list[str] = []
        for i, question in enumerate(questions):
            turn = _turn(world, tenant, user, thread, i, mode, question, asked)
            before, n_calls = _prior(agent, config), len(log.of(thread_id=thread))
            try:
                _drive_sync(agent, mode, config, question)
            except Exception as exc:  # recorded; test_no_turn_fails reports it
                turn.error = repr(exc)
            _finish(turn, agent, config, before, log, n_calls)
            run.turns.append(turn)
            asked.extend(orders_in(question))

    async def play_async(plan: tuple[Any, ...]) -> None:
        tenant, user, thread, mode, questions = plan
        config = _config(tenant, user, thread, tagger)
        asked: list[str] = []
        for i, question in enumerate(questions):
            turn = _turn(world, tenant, user, thread, i, mode, question, asked)
            before, n_calls = _prior(agent, config), len(log.of(thread_id=thread))
            try:
                await _drive_async(agent, config, question)
            except Exception as exc:
                turn.error = repr(exc)
            _finish(turn, agent, config, before, log, n_calls)
            run.turns.append(turn)
            asked.extend(orders_in(question))

    # the sync conversations one after the other in a worker thread, while the async ones
    # run concurrently on the loop: context variables must keep the runs apart
    def play_all_sync() -> None:
        for plan in sync_plans:
            play_sync(plan)

    await asyncio.gather(asyncio.to_thread(play_all_sync), *(play_async(p) for p in async_plans))
    ledger.flush()
    yield run
    ledger.close()


# ---------------------------------------------------------------- invariants, per family


def test_every_turn_completes(agent_run: Run) -> None:
    errors = [f"{t.where()}: {t.error}" for t in agent_run.turns if t.error]
    assert not errors, first(errors)
    assert (
        len(agent_run.turns)
        == sum(len(agent_run.world.users[t]) for t in agent_run.world.tenants) * THREADS * TURNS
    )
    missing = [t.where() for t in agent_run.turns if t.answer is None]
    assert not missing, first(missing)


def test_tool_answers_stay_with_their_tenant_and_user(agent_run: Run) -> None:
    problems = [p for t in agent_run.turns for p in boundary_violations(t, agent_run.world)]
    assert not problems, first(problems)
    # the check can fail: tool answers do name accounts
    assert any("account=" in str(t.answer.content) for t in agent_run.turns if t.answer)


def test_history_dependent_answers_stay_in_their_thread(agent_run: Run) -> None:
    problems = [p for t in agent_run.turns for p in history_violations(t)]
    assert not problems, first(problems)


def test_latest_human_turn_is_in_every_prompt(agent_run: Run) -> None:
    problems = [
        f"{t.where()}: {p}"
        for t in agent_run.turns
        for c in t.calls
        for p in prompt_problems(c, t.question)
    ]
    assert not problems, first(problems)
    assert sum(len(t.calls) for t in agent_run.turns) > 0


def test_tool_pairs_are_whole_in_every_prompt(agent_run: Run) -> None:
    problems = [
        f"{t.where()} ({c['model']}): {p}"
        for t in agent_run.turns
        for c in t.calls
        for p in tool_pair_problems(c["messages"])
    ]
    assert not problems, first(problems)


def test_nothing_graphthrift_wrote_is_served_from_the_cache(agent_run: Run) -> None:
    ours = {
        str(m.content)
        for t in agent_run.turns
        for m in t.new_messages
        if written_by_graphthrift(m) and not (m.response_metadata or {}).get("graphthrift_cache")
    }
    assert ours, "the scenario must produce budget stops or refused tool calls"
    problems = [
        f"{t.where()}: served from the cache: {m.content!r}"
        for t in agent_run.turns
        for m in t.served_from_cache
        if str(m.content) in ours or written_by_graphthrift(m)
    ]
    assert not problems, first(problems)


def test_every_reservation_settles(agent_run: Run) -> None:
    problems = []
    for thread_turns in _by_thread(agent_run).values():
        t = thread_turns[0]
        usage = agent_run.budget.usage({"tenant_id": t.tenant, "thread_id": t.thread})
        for scope, row in usage.items():
            if row["reserved_tokens"] or row["reserved_usd"]:
                problems.append(f"{t.thread} {scope}: still reserved {row}")
    failures = {k: v for k, v in diagnostics.counters().items() if k.startswith("budget")}
    assert not problems, first(problems) + f"\nbudget counters: {failures}"


def test_no_budget_exceeded_by_more_than_one_call(agent_run: Run) -> None:
    problems = []
    stopped = 0
    for thread_turns in _by_thread(agent_run).values():
        t = thread_turns[0]
        calls = [c for tt in thread_turns for c in tt.calls]
        largest = max((c["usage"]["total_tokens"] for c in calls), default=0)
        row = agent_run.budget.usage({"tenant_id": t.tenant, "thread_id": t.thread})["thread"]
        if row["spent_tokens"] > row["limit_tokens"] + largest:
            problems.append(f"{t.thread}: spent {row['spent_tokens']} > limit + {largest}")
        stopped += any(
            written_by_graphthrift(m) and "graphthrift_budget" in (m.response_metadata or {})
            for tt in thread_turns
            for m in tt.new_messages
        )
    assert not problems, first(problems)
    assert stopped, "no thread reached its budget: the limit is too high to test anything"


def test_budget_books_what_the_provider_reported(agent_run: Run) -> None:
    problems = []
    for thread_turns in _by_thread(agent_run).values():
        t = thread_turns[0]
        spent = sum(c["usage"]["total_tokens"] for tt in thread_turns for c in tt.calls)
        row = agent_run.budget.usage({"tenant_id": t.tenant, "thread_id": t.thread})["thread"]
        if row["spent_tokens"] != spent:
            problems.append(f"{t.thread}: budget booked {row['spent_tokens']}, calls used {spent}")
    assert not problems, first(problems)


def test_each_cache_saving_is_booked_once(agent_run: Run) -> None:
    problems = []
    for tenant in agent_run.world.tenants:
        turns = [t for t in agent_run.turns if t.tenant == tenant]
        served = sum(len(t.served_from_cache) for t in turns)
        rows = agent_run.ledger.records(tenant_id=tenant, kind="cache_hit")
        if len(rows) != served:
            problems.append(f"{tenant}: {served} answers served from cache, {len(rows)} rows")
        model_answers = sum(
            1 for t in turns for m in t.served_from_cache if not written_by_graphthrift(m)
        )
        saving = [r for r in rows if (r["saved_usd"] or 0) > 0]
        if len(saving) < model_answers:
            problems.append(
                f"{tenant}: {model_answers} model answers served, {len(saving)} rows saved money"
            )
        for t in turns:
            if t.served_from_cache and t.calls:
                problems.append(f"{t.where()}: served from cache, yet {len(t.calls)} model calls")
    assert not problems, first(problems)
    assert any(t.served_from_cache for t in agent_run.turns), "nothing was served from cache"


def test_ledger_cost_is_the_providers_usage_priced_by_genai_prices(agent_run: Run) -> None:
    for tenant in agent_run.world.tenants:
        calls = agent_run.log.of(tenant_id=tenant)
        rows = agent_run.ledger.records(tenant_id=tenant, kind="llm")
        assert len(rows) == len(calls), (tenant, len(rows), len(calls))
        booked = sum(r["cost_usd"] for r in rows)
        assert booked == pytest.approx(price(calls), abs=1e-6), tenant
        assert {r["model"] for r in rows} <= {CHEAP, STRONG}


def _by_thread(run: Run) -> dict[str, list[Turn]]:
    out: dict[str, list[Turn]] = {}
    for t in run.turns:
        out.setdefault(t.thread, []).append(t)
    return out
