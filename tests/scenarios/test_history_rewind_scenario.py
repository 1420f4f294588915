"""Composed scenario: a thread that starts over keeps recall to the conversation it holds.

The pruner numbers the turns it folds by its state, which lives in the agent's checkpoint.
Two ways a thread id comes to hold another conversation than the one recall kept:

- **Time travel.** The run is resumed from the thread's first checkpoint (LangGraph's
  ``checkpoint_id``) and the user gives another loyalty number in the new branch.
- **A lost checkpoint.** The agent is built again on an empty checkpointer (a restart
  without a persistent saver) and the same thread id starts over with another number.

Either way the final question must bring back the number of the conversation the thread
now holds, never the abandoned one, through the stack the recall scenario uses (the
tenant's prompt, the semantic cache, history pruning with recall, a per-thread budget).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from scenario_kit import (
    CHEAP,
    FIRST_ORDER_Q,
    World,
    conversation,
    support_agent,
    support_tools,
)
from test_history_recall_scenario import LOYALTY_Q, MAX_TOKENS, TURNS, _reply

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

from fakes import CallLog, RecordingChatModel

OLD, NEW = "L-111111", "L-222222"


def _stack(store: Any, world: World, log: CallLog, checkpointer: Any) -> Any:
    ledger = Ledger(store)
    cache = SemanticCache(store, namespace=f"rewind-{world.tenants[0]}", ledger=ledger, timeout=5)
    recall = FoldedTurnStore(store, embedder=StaticEmbedder())
    pruner = HistoryPruner(max_tokens=MAX_TOKENS, model=CHEAP, recall=recall, recall_tokens=80)
    model = RecordingChatModel(model_name=CHEAP, reply=_reply, log=log)
    middleware = [
        SemanticCacheMiddleware(cache),
        HistoryPruningMiddleware(pruner=pruner),
        BudgetMiddleware(Budget(store, max_usd={"thread": 5.0}, max_output_tokens=200)),
    ]
    return support_agent(world, model, support_tools(world), middleware, checkpointer=checkpointer)


def _converse(agent: Any, config: RunnableConfig, number: str, seed: int) -> list[str]:
    """One conversation: the number, the seeded support questions, the number asked back;
    the answers."""
    questions = [q for q in conversation(random.Random(seed), TURNS) if q != FIRST_ORDER_Q]
    answers = []
    for question in [f"Hi, my loyalty number is {number}.", *questions, LOYALTY_Q]:
        result = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
        answers.append(str(result["messages"][-1].content))
        config = {**config, "configurable": {"thread_id": config["configurable"]["thread_id"]}}
    return answers


def _recalled(log: CallLog, since: int) -> list[str]:
    return [
        str(m.content)
        for call in log.calls[since:]
        for m in call["messages"]
        if getattr(m, "id", None) == RECALL_ID
    ]


@pytest.mark.parametrize("how", ["time-travel", "lost-checkpoint"])
def test_recall_follows_the_conversation_the_thread_now_holds(store: Any, how: str) -> None:
    world, log = World.make(), CallLog()
    tenant, user = world.tenants[0], world.users[world.tenants[0]][0]
    config: RunnableConfig = {
        "configurable": {"thread_id": f"{tenant}-{user}-{how}"},
        "metadata": {"tenant_id": tenant, "user_id": user},
    }
    agent = _stack(store, world, log, InMemorySaver())
    assert OLD in _converse(agent, config, OLD, seed=16)[-1]
    assert any(OLD in text for text in _recalled(log, 0))  # recall brought it the first time
    if how == "time-travel":
        start = list(agent.get_state_history(config))[-1]  # the thread's first checkpoint
        again: RunnableConfig = {**config, "configurable": dict(start.config["configurable"])}
    else:
        agent = _stack(store, world, log, InMemorySaver())  # the same thread id, no checkpoint
        again = config
    since = len(log.calls)
    answers = _converse(agent, again, NEW, seed=17)
    assert NEW in answers[-1] and OLD not in answers[-1]
    recalled = _recalled(log, since)
    assert recalled, "the new conversation recalled nothing"
    assert all(OLD not in text for text in recalled)
    assert any(NEW in text for text in recalled)  # and recall brought the new one
