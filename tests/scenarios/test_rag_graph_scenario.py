"""Composed scenario: a custom LangGraph RAG graph with the whole graphthrift stack.

    START -> retrieve -> compress (compress_context, defer_saving=True) -> lookup (lookup_cache)
          -> hit: END | miss: prune (summarize_history) -> route (route_model)
          -> guard (enforce_budget) -> model -> settle -> route (accept or escalate)
          -> store (cache_answer) -> END

Two tenants x two users x two threads, seeded conversations over invoke,
``stream(stream_mode="messages")`` and ``astream``, one ``InMemorySaver``. The corpus has
per-tenant policy documents and one account document per user, so an answer carries the
tenant and account it was built from. Compression runs before the lookup, so its saving is
held (``defer_saving``) until the model call it shrank: a hit drops it, booked once. The run happens once per module; each test checks one
invariant family on every turn.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from scenario_kit import (
    CHEAP,
    HEDGE,
    STRONG,
    Turn,
    World,
    first,
    latest_human_index,
    price,
    prompt_problems_of,
    written_by_graphthrift,
)

from graphthrift import Budget, CostTagger, Ledger, Router, SemanticCache
from graphthrift.compress import flush_savings
from graphthrift.langgraph import (
    BudgetState,
    CacheState,
    CompressState,
    HistoryState,
    RouteState,
    cache_answer,
    choose_model,
    compress_context,
    enforce_budget,
    lookup_cache,
    route_on_budget,
    route_on_cache_hit,
    route_on_model,
    summarize_history,
)

from fakes import CallLog, RecordingChatModel

TURNS = 20
THREADS = 2
THREAD_TOKEN_LIMIT = 1_500
MODES = ("invoke", "stream", "astream")
WORDS = ("falcon", "harbor", "juniper", "quartz", "saffron", "tundra")
CODE_Q = "What is my code word?"
NO_CODE = "You have not told me a code word."


class RagState(CacheState, CompressState, RouteState, BudgetState, HistoryState):
    """The graph's state: the declared states of the graphthrift nodes it uses, extended."""


def corpus(world: World) -> list[Document]:
    docs = []
    for i, tenant in enumerate(world.tenants):
        days = 14 + 16 * i
        docs += [
            Document(
                f"Refund policy of {tenant}. The refund window is {days} days from delivery. "
                "Refunds go back to the original card. Gift cards are not refundable. "
                "Our warehouse staff inspect every returned parcel before approval.",
                metadata={"tenant_id": tenant, "id": f"{tenant}-refunds"},
            ),
            Document(
                f"Shipping at {tenant}. Standard parcels arrive within 5 business days. "
                "Express parcels arrive the next day when ordered before noon. "
                "We ship to every country in the European Union.",
                metadata={"tenant_id": tenant, "id": f"{tenant}-shipping"},
            ),
        ]
        for user in world.users[tenant]:
            h = sum(map(ord, user + tenant))
            plan = ("gold", "silver", "basic")[h % 3]
            docs.append(
                Document(
                    f"Account notes. The subscription plan is {plan} for account={user}@{tenant}. "
                    f"The subscription renews on 2027-0{1 + h % 9}-1{h % 10}. "
                    "The account was opened through the website.",
                    metadata={"tenant_id": tenant, "user_id": user, "id": f"{tenant}-{user}"},
                )
            )
    return docs


def rag_reply(messages: Sequence[BaseMessage], model: str) -> tuple[str, list[Any]]:
    """The RAG model's answer: a pure function of the context and the conversation."""
    context = " ".join(str(m.content) for m in messages if m.type == "system")
    at = latest_human_index(messages)
    question = str(messages[at].content) if at >= 0 else ""
    if question == "What plan am I on?":
        if m := re.search(r"plan is (\w+) for (account=\S+?)\.", context):
            return f"Your plan is {m.group(1)} ({m.group(2)}).", []
        return HEDGE, []
    if question == "When does my subscription renew?":
        m = re.search(r"renews on ([\d-]+)", context)
        acct = re.search(r"(account=\S+?)\.", context)
        if m is None or acct is None or model == CHEAP:
            return HEDGE, []
        return f"Your subscription renews on {m.group(1)} ({acct.group(1)}).", []
    if question in ("What is the refund window?", "How long do I have to return an item?"):
        if m := re.search(r"Refund policy of (\S+)\. The refund window is (\d+ days)", context):
            return f"At {m.group(1)} the refund window is {m.group(2)}.", []
        return HEDGE, []
    if m := re.fullmatch(r"Remember my code word (\w+)\.", question):
        return f"Noted: {m.group(1)}.", []
    if question == CODE_Q:
        earlier = " ".join(str(x.content) for x in messages[:at] if x.type == "human")
        words = re.findall(r"code word (\w+)\.", earlier)
        return (f"Your code word is {words[-1]}." if words else NO_CODE), []
    return "I'm sorry, I can't help with that.", []


def rag_conversation(rng: random.Random, n: int) -> list[str]:
    out = ["What is the refund window?"]  # a first turn: reusable under any safe cache key
    for _ in range(n - 1):
        kind = rng.choices(["plan", "renew", "refund", "remember", "code"], [3, 2, 3, 2, 3])[0]
        if kind == "plan":
            out.append("What plan am I on?")
        elif kind == "renew":
            out.append("When does my subscription renew?")
        elif kind == "refund":
            out.append(
                rng.choice(["What is the refund window?", "How long do I have to return an item?"])
            )
        elif kind == "remember":
            out.append(f"Remember my code word {rng.choice(WORDS)}.")
        else:
            out.append(CODE_Q)
    return out


def build_graph(world: World, store: Any, ledger: Ledger, log: CallLog) -> tuple[Any, Budget]:
    docs = corpus(world)
    models = {
        CHEAP: RecordingChatModel(model_name=CHEAP, reply=rag_reply, log=log),
        STRONG: RecordingChatModel(model_name=STRONG, reply=rag_reply, log=log),
    }
    cache = SemanticCache(store, namespace=f"rag-{world.tenants[0]}", ledger=ledger, timeout=5)
    budget = Budget(store, max_tokens={"thread": THREAD_TOKEN_LIMIT}, max_output_tokens=150)
    router = Router(cheap=CHEAP, strong=STRONG, ledger=ledger, threshold=0.95)
    guard = enforce_budget(budget, model=STRONG)

    def retrieve(state: RagState, config: RunnableConfig) -> dict[str, Any]:
        md = config.get("metadata") or {}
        question = str(state["messages"][-1].content)
        found = [
            d
            for d in docs
            if d.metadata["tenant_id"] == md["tenant_id"]
            and d.metadata.get("user_id") in (None, md["user_id"])
        ]
        return {"question": question, "documents": found}

    def model(state: RagState, config: RunnableConfig) -> dict[str, Any]:
        name = state.get("route_model") or CHEAP
        context = "\n".join(d.page_content for d in state.get("documents") or [])
        prompt = [
            SystemMessage(f"You answer from the context only.\nContext:\n{context}"),
            *(state.get("llm_input_messages") or state["messages"]),
        ]
        answer = guard.capped(models[name], state).invoke(prompt, config)
        return {"messages": [answer]}

    builder = StateGraph(RagState)
    builder.add_node("retrieve", retrieve)
    builder.add_node(
        "compress",
        compress_context(target_ratio=0.6, model=CHEAP, ledger=ledger, defer_saving=True),
    )
    builder.add_node("lookup", lookup_cache(cache))
    builder.add_node("prune", summarize_history(max_tokens=400, model=CHEAP))
    builder.add_node("route", choose_model(router))
    builder.add_node("guard", guard.guard)
    builder.add_node("model", model)
    builder.add_node("settle", guard.settle)
    builder.add_node("store", cache_answer(cache))
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "compress")
    builder.add_edge("compress", "lookup")
    builder.add_conditional_edges("lookup", route_on_cache_hit("prune"))
    builder.add_edge("prune", "route")
    builder.add_conditional_edges("route", route_on_model("guard", "guard", "store"))
    builder.add_conditional_edges("guard", route_on_budget("model", "store"))
    builder.add_edge("model", "settle")
    builder.add_edge("settle", "route")
    builder.add_edge("store", END)
    return builder.compile(checkpointer=InMemorySaver()), budget


class Run:
    def __init__(self, world: World, log: CallLog, ledger: Ledger, budget: Budget) -> None:
        self.world, self.log, self.ledger, self.budget = world, log, ledger, budget
        self.turns: list[Turn] = []


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rag_run(store: Any) -> AsyncIterator[Run]:
    world = World.make(n_users=2)
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    graph, budget = build_graph(world, store, ledger, log)
    tagger = CostTagger(ledger)
    rng = random.Random(11_30)
    run = Run(world, log, ledger, budget)
    plans: list[tuple[Any, ...]] = []
    for tenant in world.tenants:
        for user in world.users[tenant]:
            for t in range(THREADS):
                mode = MODES[len(plans) % len(MODES)]
                thread = f"rag-{tenant}-{user}-t{t}-{uuid.uuid4().hex[:4]}"
                plans.append((tenant, user, thread, mode, rag_conversation(rng, TURNS)))

    def config_of(tenant: str, user: str, thread: str) -> dict[str, Any]:
        return {
            "configurable": {"thread_id": thread},
            "metadata": {"tenant_id": tenant, "user_id": user, "feature": "rag"},
            "callbacks": [tagger],
        }

    def start(plan: tuple[Any, ...], i: int, question: str) -> tuple[Turn, dict[str, Any], int]:
        tenant, user, thread, mode, _ = plan
        config = config_of(tenant, user, thread)
        asked = [w for q in plan[4][:i] for w in re.findall(r"code word (\w+)\.", q)]
        turn = Turn(tenant, user, thread, i, mode, question, asked)
        before = len(graph.get_state(config).values.get("messages", []))
        return turn, config, before

    def finish(turn: Turn, config: dict[str, Any], before: int, n_calls: int) -> None:
        turn.new_messages = list(graph.get_state(config).values.get("messages", []))[before:]
        turn.calls = log.of(thread_id=turn.thread)[n_calls:]
        run.turns.append(turn)

    def play_sync(plan: tuple[Any, ...]) -> None:
        for i, question in enumerate(plan[4]):
            turn, config, before = start(plan, i, question)
            n_calls = len(log.of(thread_id=turn.thread))
            inputs = {"messages": [{"role": "user", "content": question}]}
            try:
                if turn.mode == "invoke":
                    graph.invoke(inputs, config)
                else:
                    for _ in graph.stream(inputs, config, stream_mode="messages"):
                        pass
            except Exception as exc:
                turn.error = repr(exc)
            finish(turn, config, before, n_calls)

    async def play_async(plan: tuple[Any, ...]) -> None:
        for i, question in enumerate(plan[4]):
            turn, config, before = start(plan, i, question)
            n_calls = len(log.of(thread_id=turn.thread))
            try:
                async for _ in graph.astream(
                    {"messages": [{"role": "user", "content": question}]}, config
                ):
                    pass
            except Exception as exc:
                turn.error = repr(exc)
            finish(turn, config, before, n_calls)

    def play_all_sync() -> None:
        for plan in plans:
            if plan[3] != "astream":
                play_sync(plan)

    await asyncio.gather(
        asyncio.to_thread(play_all_sync), *(play_async(p) for p in plans if p[3] == "astream")
    )
    ledger.flush()
    yield run
    ledger.close()


def _answer_text(turn: Turn) -> str:
    answer = turn.answer
    return "" if answer is None else str(answer.content)


def _by_thread(run: Run) -> dict[str, list[Turn]]:
    out: dict[str, list[Turn]] = {}
    for t in run.turns:
        out.setdefault(t.thread, []).append(t)
    return out


# ---------------------------------------------------------------- invariants, per family


def test_every_turn_is_answered(rag_run: Run) -> None:
    errors = [f"{t.where()}: {t.error}" for t in rag_run.turns if t.error]
    assert not errors, first(errors)
    missing = [t.where() for t in rag_run.turns if t.answer is None]
    assert not missing, first(missing)


def test_answers_carry_only_their_own_tenant_and_account(rag_run: Run) -> None:
    problems = []
    for t in rag_run.turns:
        text = _answer_text(t)
        for acct in re.findall(r"account=(\S+?)\)", text):
            if acct != f"{t.user}@{t.tenant}":
                problems.append(f"{t.where()}: {t.question!r} got {acct}'s data: {text!r}")
        for tenant in rag_run.world.tenants:
            if tenant != t.tenant and tenant in text:
                problems.append(f"{t.where()}: {t.question!r} got {tenant}'s policy: {text!r}")
    assert not problems, first(problems)
    assert any("account=" in _answer_text(t) for t in rag_run.turns)


def test_history_dependent_answers_stay_in_their_thread(rag_run: Run) -> None:
    problems = []
    for t in rag_run.turns:
        text = _answer_text(t)
        if t.question != CODE_Q or written_by_graphthrift(t.answer or AIMessage("")):
            continue
        expected = f"Your code word is {t.asked_before[-1]}." if t.asked_before else NO_CODE
        if text != expected:
            problems.append(f"{t.where()}: expected {expected!r}, got {text!r}")
    assert not problems, first(problems)


def test_latest_human_turn_is_in_every_prompt(rag_run: Run) -> None:
    problems = prompt_problems_of(rag_run.turns)
    assert not problems, first(problems)
    assert any(t.calls for t in rag_run.turns)


def test_nothing_graphthrift_wrote_is_served_from_the_cache(rag_run: Run) -> None:
    stops = [m for t in rag_run.turns for m in t.new_messages if written_by_graphthrift(m)]
    assert stops, "no thread reached its budget: the limit is too high to test anything"
    problems = [
        f"{t.where()}: served from the cache: {m.content!r}"
        for t in rag_run.turns
        for m in t.served_from_cache
        if written_by_graphthrift(m)
    ]
    assert not problems, first(problems)


def test_every_reservation_settles_and_no_budget_is_exceeded(rag_run: Run) -> None:
    problems = []
    for thread, turns in _by_thread(rag_run).items():
        t = turns[0]
        row = rag_run.budget.usage({"tenant_id": t.tenant, "thread_id": thread})["thread"]
        if row["reserved_tokens"]:
            problems.append(f"{thread}: {row['reserved_tokens']} tokens still reserved")
        largest = max((c["usage"]["total_tokens"] for tt in turns for c in tt.calls), default=0)
        if row["spent_tokens"] > row["limit_tokens"] + largest:
            problems.append(f"{thread}: spent {row['spent_tokens']} > limit + {largest}")
        spent = sum(c["usage"]["total_tokens"] for tt in turns for c in tt.calls)
        if row["spent_tokens"] != spent:
            problems.append(f"{thread}: budget booked {row['spent_tokens']}, calls used {spent}")
    assert not problems, first(problems)


def test_budget_prices_the_model_actually_called(rag_run: Run) -> None:
    problems = []
    for thread, turns in _by_thread(rag_run).items():
        t = turns[0]
        row = rag_run.budget.usage({"tenant_id": t.tenant, "thread_id": thread})["thread"]
        spent = price(c for tt in turns for c in tt.calls)
        if abs(row["spent_usd"] - spent) > 1e-6:
            problems.append(
                f"{thread}: budget booked ${row['spent_usd']:.6f}, calls cost ${spent:.6f}"
            )
    assert not problems, first(problems)


def test_each_cache_hit_is_booked_once(rag_run: Run) -> None:
    problems = []
    for tenant in rag_run.world.tenants:
        turns = [t for t in rag_run.turns if t.tenant == tenant]
        served = sum(len(t.served_from_cache) for t in turns)
        rows = rag_run.ledger.records(tenant_id=tenant, kind="cache_hit")
        if len(rows) != served:
            problems.append(f"{tenant}: {served} cache answers served, {len(rows)} cache_hit rows")
        problems += [
            f"{t.where()}: a cache hit called the model"
            for t in turns
            if t.served_from_cache and t.calls
        ]
    assert not problems, first(problems)
    assert any(t.served_from_cache for t in rag_run.turns)


def test_compression_is_not_booked_on_a_cache_hit(rag_run: Run) -> None:
    flush_savings()  # what process exit does with savings still held: none may be left
    rag_run.ledger.flush()
    problems = []
    for tenant in rag_run.world.tenants:
        turns = [t for t in rag_run.turns if t.tenant == tenant]
        answered = sum(1 for t in turns if not t.served_from_cache)
        rows = rag_run.ledger.records(tenant_id=tenant, kind="compression")
        if len(rows) > answered:
            problems.append(f"{tenant}: {len(rows)} compression rows for {answered} model turns")
    assert not problems, first(problems)


def test_ledger_cost_is_the_providers_usage_priced_by_genai_prices(rag_run: Run) -> None:
    for tenant in rag_run.world.tenants:
        calls = rag_run.log.of(tenant_id=tenant)
        rows = rag_run.ledger.records(tenant_id=tenant, kind="llm")
        assert len(rows) == len(calls) > 0, (tenant, len(rows), len(calls))
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(price(calls), abs=1e-6)
