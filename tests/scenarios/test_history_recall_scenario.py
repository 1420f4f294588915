"""Composed scenario: long support threads with history recall, the semantic cache and budgets.

Two tenants x two users, one long thread each. Each user gives a loyalty number in the
first turn, then asks 24 seeded support questions (order look-ups with tool calls,
refunds, FAQ), then asks for the loyalty number back. The stack (outermost first):

    tenant_prompt (dynamic_prompt)  -> the system prompt the cache key fingerprints
    SemanticCacheMiddleware         -> a hit skips everything below
    HistoryPruningMiddleware        -> folds old turns, keeps them in pgvector, recalls them
    BudgetMiddleware                -> reserves and books each model call per thread

By the last turn the loyalty number was folded out of the window long ago; only recall
brings it back. The cache sees the same final question from every user: a hit across users
would hand one user another's number. The run happens once per module; each test checks
one invariant family on every call.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from scenario_kit import (
    BUDGET_STOP,
    CHEAP,
    FIRST_ORDER_Q,
    World,
    conversation,
    digest,
    first,
    latest_human_index,
    prompt_problems,
    support_agent,
    support_reply,
    support_tools,
    tool_pair_problems,
)

from graphthrift import Budget, Ledger, SemanticCache
from graphthrift.embed.static import StaticEmbedder
from graphthrift.history.pruner import HistoryPruner
from graphthrift.history.recall import FoldedTurnStore
from graphthrift.history.state import RECALL_ID
from graphthrift.middleware import (
    BudgetMiddleware,
    HistoryPruningMiddleware,
    SemanticCacheMiddleware,
)
from graphthrift.text.messages import to_messages
from graphthrift.text.tokens import count_messages

from fakes import CallLog, RecordingChatModel

MAX_TOKENS = 600
TURNS = 24
LOYALTY_Q = "What is my loyalty number again?"
LOYALTY_RE = re.compile(r"loyalty number is (L-\d{6})")


def loyalty(tenant: str, user: str) -> str:
    return f"L-{digest('loyalty', tenant, user) % 1_000_000:06d}"


def _reply(messages: list[BaseMessage], model: str) -> Any:
    at = latest_human_index(messages)
    if at >= 0 and messages[at].content == LOYALTY_Q:
        earlier = " ".join(str(m.content) for m in messages[:at])
        found = LOYALTY_RE.findall(earlier)
        return (f"Your loyalty number is {found[0]}." if found else "I don't know it."), []
    if at >= 0 and LOYALTY_RE.search(str(messages[at].content)):
        return "Thanks, noted.", []
    return support_reply(messages, model)


class Run:
    """What the scenario produced: every model call, every answer, the stack's parts."""

    def __init__(self) -> None:
        self.world = World.make()
        self.log = CallLog()
        self.answers: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.threads: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module", params=[False, True], ids=["need-off", "need-on"])
def run(store: Any, request: pytest.FixtureRequest) -> Run:
    """The whole scenario, with recall's defaults and with the query's need on."""
    out = Run()
    world, log = out.world, out.log
    model = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)

    ledger = Ledger(store)
    cache = SemanticCache(store, namespace=f"recall-{world.tenants[0]}", ledger=ledger, timeout=5)
    out.budget = Budget(store, max_usd={"thread": 5.0}, max_output_tokens=200)  # type: ignore[attr-defined]
    recall = FoldedTurnStore(store, embedder=StaticEmbedder(), need_vector=request.param)
    pruner = HistoryPruner(max_tokens=MAX_TOKENS, model=CHEAP, recall=recall, recall_tokens=80)
    out.pruner = pruner  # type: ignore[attr-defined]
    agent = support_agent(
        world,
        model,
        support_tools(world),
        [
            SemanticCacheMiddleware(cache),
            HistoryPruningMiddleware(pruner=pruner),
            BudgetMiddleware(out.budget),  # type: ignore[attr-defined]
        ],
    )
    rng = random.Random(16)
    for tenant in world.tenants:
        for user in world.users[tenant]:
            thread = f"{tenant}-{user}-long"
            out.threads[(tenant, user)] = thread
            questions = [q for q in conversation(rng, TURNS) if q != FIRST_ORDER_Q]
            turns = [
                f"Hi, my loyalty number is {loyalty(tenant, user)}.",
                *questions,
                LOYALTY_Q,
            ]
            config: RunnableConfig = {
                "configurable": {"thread_id": thread},
                "metadata": {"tenant_id": tenant, "user_id": user},
            }
            for question in turns:
                before = len(log.calls)
                result = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
                for call in log.calls[before:]:
                    call["question"] = question
                answer = str(result["messages"][-1].content)
                out.answers.setdefault((tenant, user), []).append((question, answer))
    ledger.close()
    return out


def _calls(run: Run) -> list[dict[str, Any]]:
    assert run.log.calls, "the scenario made no model call"
    return run.log.calls


def test_a_number_folded_long_ago_comes_back_to_its_own_user(run: Run) -> None:
    wrong = []
    for (tenant, user), answers in run.answers.items():
        question, answer = answers[-1]
        assert question == LOYALTY_Q
        if loyalty(tenant, user) not in answer:
            wrong.append(f"{user}@{tenant}: answered {answer!r}")
        others = {loyalty(t, u) for t, u in run.answers if (t, u) != (tenant, user)}
        wrong += [f"{user}@{tenant} got {o}" for o in others if o in answer]
    assert not wrong, first(wrong)
    # the number had left the window: its first turn is folded, and recall brought it
    final = [c for c in _calls(run) if c["question"] == LOYALTY_Q]
    assert len(final) == len(run.answers)
    for call in final:
        humans = [m for m in call["messages"] if m.type == "human" and m.id != RECALL_ID]
        assert not any(str(m.content).startswith("Hi, my loyalty") for m in humans)


def test_recall_stays_in_its_tenant_and_thread(run: Run) -> None:
    leaks = []
    for call in _calls(run):
        md = call["metadata"]
        own = loyalty(md["tenant_id"], md["user_id"])
        for m in call["messages"]:
            if getattr(m, "id", None) == RECALL_ID:
                for number in LOYALTY_RE.findall(str(m.content)):
                    if number != own:
                        leaks.append(f"{md['user_id']}@{md['tenant_id']} saw {number}")
                accounts = re.findall(r"account=([\w.-]+)@([\w.-]+)", str(m.content))
                leaks += [
                    f"{md['user_id']}@{md['tenant_id']} saw account {u}@{t}"
                    for u, t in accounts
                    if (u, t) != (md["user_id"], md["tenant_id"])
                ]
    assert not leaks, first(leaks)
    assert any(
        getattr(m, "id", None) == RECALL_ID for c in _calls(run) for m in c["messages"]
    )  # recall did take part


def test_every_prompt_is_within_budget_with_the_request_verbatim_and_last(run: Run) -> None:
    problems = []
    for call in _calls(run):
        problems += prompt_problems(call, call["question"])
        problems += tool_pair_problems(call["messages"])
        thread = [m for m in call["messages"] if m.type != "system"]
        tokens = count_messages(to_messages(thread), CHEAP).tokens
        if tokens > MAX_TOKENS:
            problems.append(f"{call['question']!r}: {tokens} tokens > {MAX_TOKENS}")
        at = latest_human_index(call["messages"])
        ids = [getattr(m, "id", None) for m in call["messages"]]
        if RECALL_ID in ids and ids.index(RECALL_ID) != at - 1:
            problems.append(f"{call['question']!r}: recall not just before the latest message")
    assert not problems, first(problems)


def test_budgets_booked_every_thread_and_stopped_none(run: Run) -> None:
    stops = [a for answers in run.answers.values() for _, a in answers if a.startswith(BUDGET_STOP)]
    assert not stops, first(stops)
    budget: Budget = run.budget  # type: ignore[attr-defined]
    for (tenant, _user), thread in run.threads.items():
        row = budget.usage({"tenant_id": tenant, "thread_id": thread})["thread"]
        assert 0 < row["spent_usd"] <= 5.0
