"""Recall of folded turns through the pruner and its three adapters, on the real store.

A fact stated at a thread's start is folded out of the prompt long before it is asked
about; recall brings it back verbatim, just before the latest user message, inside the
budget, and only in its own tenant's thread. A store outage changes nothing but a counter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from llama_index.core.base.llms.types import ChatMessage

from cache_helpers import scratch_database
from graphthrift import diagnostics
from graphthrift.embed.static import StaticEmbedder
from graphthrift.errors import ConfigError
from graphthrift.history.pruner import HistoryPruner
from graphthrift.history.recall import FoldedTurnStore
from graphthrift.history.state import RECALL_ID
from graphthrift.langgraph.history import HistoryState, summarize_history
from graphthrift.llamaindex.memory import PrunedChatMemory
from graphthrift.middleware.history import HistoryPruningMiddleware
from graphthrift.store.postgres import Store
from graphthrift.text.messages import to_messages
from graphthrift.text.tokens import count_messages, count_text

from fakes import CallLog, RecordingChatModel

BUDGET = 200
FILLER = [
    "Can you recommend a science fiction novel for a long train ride?",
    "What is a good recipe for a vegetarian lasagna with spinach?",
    "How do I repot a fiddle leaf fig without hurting the roots?",
    "Which stretches help after a long day sitting at a desk?",
    "Tell me a fun fact about octopuses and how they change colour.",
    "What should I pack for a weekend camping trip in the mountains?",
    "How does a heat pump keep a house warm in the winter?",
    "Suggest a board game that works well for six players.",
    "What is the difference between espresso and a flat white?",
    "How can I improve my handwriting as an adult?",
    "Which podcasts explain economics for beginners?",
    "How long should I boil an egg for a runny yolk?",
]
QUESTION = "Remind me, what locker code did I give you at the start?"


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder()


@pytest.fixture
def turns(store: Store, embedder: StaticEmbedder) -> FoldedTurnStore:
    return FoldedTurnStore(store, embedder=embedder)


def _user_turns(code: str) -> list[str]:
    return [f"My gym locker code is {code}, please remember it.", *FILLER, QUESTION]


def _reply(messages: list[BaseMessage], model: str) -> tuple[str, list[Any]]:
    return "Noted, happy to help with that.", []


def _check_prompt(prompt: list[Any], question: str) -> str:
    """The latest user message is verbatim and last, the prompt within budget; returns the
    recall message's text ('' when there is none)."""
    plain = to_messages(prompt)
    assert plain[-1].role == "user" and plain[-1].text == question
    assert count_messages(plain).tokens <= BUDGET
    at = [
        k
        for k, (raw, m) in enumerate(zip(prompt, plain, strict=True))
        if m.id == RECALL_ID
        or (getattr(raw, "additional_kwargs", None) or {}).get("graphthrift_recall")
    ]
    assert len(at) <= 1
    if at:
        assert at[0] == len(plain) - 2  # just before the latest message
    return plain[at[0]].text if at else ""


SCOPES = [("acme", "t1", "4417"), ("acme", "t2", "9082"), ("globex", "t1", "3356")]


def _own_code_only(recalled: dict[tuple[str, str], str]) -> None:
    for tenant, thread, code in SCOPES:
        text = recalled[(tenant, thread)]
        assert code in text, (tenant, thread, text)
        for _, _, other in SCOPES:
            if other != code:
                assert other not in text


# -- the core ---------------------------------------------------------------------------


def test_recall_brings_back_a_fact_folded_long_ago(turns: FoldedTurnStore, tenant: str) -> None:
    pruner = HistoryPruner(max_tokens=BUDGET, recall=turns, max_summary_tokens=40)
    history: list[dict[str, str]] = []
    state = None
    for k, text in enumerate(_user_turns("4417")):
        history.append({"role": "user", "content": text, "id": f"u{k}"})
        result = pruner.prune(history, state, tenant=tenant, thread="th")
        state = result.state
        prompt = [{"role": m.role, "content": m.text, "id": m.id} for m in result.messages]
        recalled = _check_prompt(prompt, text)
        assert result.tokens_out <= BUDGET
        history.append({"role": "assistant", "content": "Noted.", "id": f"a{k}"})
    assert 0 in result.hidden  # the fact's turn was folded out of the window
    assert "4417" in recalled
    assert any("4417" in s.text for s in result.recalled)
    assert result.summary is not None and result.summary.id != RECALL_ID
    # without a thread there is no scope: nothing is kept or recalled
    plain = pruner.prune(history[:-1], state)
    assert plain.recalled == () and plain.recall_message is None


def test_recall_needs_view_mode_and_a_store() -> None:
    with pytest.raises(ConfigError, match="recall"):
        HistoryPruner(recall="not a store")  # type: ignore[arg-type]


def test_adapters_refuse_recall_in_replace_mode(turns: FoldedTurnStore) -> None:
    with pytest.raises(ConfigError, match="mode='view'"):
        summarize_history(recall=turns, mode="replace")
    with pytest.raises(ConfigError, match="mode='view'"):
        HistoryPruningMiddleware(recall=turns, mode="replace")


def test_a_store_outage_changes_nothing_but_a_counter(
    store: Store, turns: FoldedTurnStore, embedder: StaticEmbedder, tmp_path: Path, tenant: str
) -> None:
    with scratch_database(store.url) as (url, set_down):
        db = Store(url, home=tmp_path)
        try:
            down = FoldedTurnStore(db, embedder=embedder, timeout=0.5)
            set_down(True)
            broken = HistoryPruner(max_tokens=BUDGET, recall=down)
            healthy = HistoryPruner(max_tokens=BUDGET, recall=turns)
            before = diagnostics.counters()
            history: list[dict[str, str]] = []
            states: list[Any] = [None, None]
            recalled = 0
            for k, text in enumerate(_user_turns("4417")):
                history.append({"role": "user", "content": text, "id": f"u{k}"})
                a = broken.prune(history, states[0], tenant="t", thread="th")
                b = healthy.prune(history, states[1], tenant=tenant, thread="th")
                # the same prompt, less the recalled turns the healthy store brought back
                assert a.messages == [m for m in b.messages if m.id != RECALL_ID]
                assert a.state == b.state and a.recalled == ()
                recalled += bool(b.recalled)
                states = [a.state, b.state]
                history.append({"role": "assistant", "content": "Noted.", "id": f"a{k}"})
            assert recalled  # the healthy store did recall: the comparison means something
            after = diagnostics.counters()
            assert after.get("recall_failure", 0) > before.get("recall_failure", 0)
            assert after.get("recall_add_failure", 0) > before.get("recall_add_failure", 0)
            set_down(False)
        finally:
            db.close()


# -- through each adapter: the fact comes back, only in its own tenant's thread -------------


def _graph(turns: FoldedTurnStore, log: CallLog) -> Any:
    model = RecordingChatModel(reply=_reply, log=log)

    def call_model(state: HistoryState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["llm_input_messages"])]}

    builder = StateGraph(HistoryState)
    builder.add_node(
        "prune", summarize_history(recall=turns, max_tokens=BUDGET, max_summary_tokens=40)
    )
    builder.add_node("model", call_model)
    builder.add_edge(START, "prune")
    builder.add_edge("prune", "model")
    return builder.compile(checkpointer=InMemorySaver())


def _config(tenant: str, thread: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread}, "metadata": {"tenant_id": tenant}}


async def test_langgraph_node_recalls_within_its_tenant_and_thread(
    turns: FoldedTurnStore, tenant: str
) -> None:
    log = CallLog()
    graph = _graph(turns, log)
    recalled: dict[tuple[str, str], str] = {}
    for k, (name, thread, code) in enumerate(SCOPES):
        config = _config(tenant + name, thread)
        for text in _user_turns(code):
            if k % 2:  # the async node as well
                await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
            else:
                graph.invoke({"messages": [HumanMessage(text)]}, config)
            recalled[(name, thread)] = _check_prompt(log.calls[-1]["messages"], text)
    _own_code_only(recalled)


async def test_agent_middleware_recalls_within_its_tenant_and_thread(
    turns: FoldedTurnStore, tenant: str
) -> None:
    log = CallLog()
    agent = create_agent(
        RecordingChatModel(reply=_reply, log=log),
        middleware=[
            HistoryPruningMiddleware(recall=turns, max_tokens=BUDGET, max_summary_tokens=40)
        ],
        checkpointer=InMemorySaver(),
    )
    recalled: dict[tuple[str, str], str] = {}
    for k, (name, thread, code) in enumerate(SCOPES):
        config = _config(tenant + name, thread)
        for text in _user_turns(code):
            message = {"messages": [HumanMessage(text)]}
            if k % 2:  # the async hooks as well
                await agent.ainvoke(message, config)
            else:
                agent.invoke(message, config)
            recalled[(name, thread)] = _check_prompt(log.calls[-1]["messages"], text)
        # the thread itself is kept whole: recall never enters messages
        state = agent.get_state(config).values
        assert all(getattr(m, "id", None) != RECALL_ID for m in state["messages"])
        assert isinstance(state["messages"][-1], AIMessage)
    _own_code_only(recalled)


def test_llamaindex_memory_recalls_within_its_tenant_and_thread(
    turns: FoldedTurnStore, tenant: str
) -> None:
    recalled: dict[tuple[str, str], str] = {}
    for name, thread, code in SCOPES:
        memory = PrunedChatMemory.from_defaults(
            max_tokens=BUDGET,
            max_summary_tokens=40,
            recall=turns,
            tenant_id=tenant + name,
            thread_id=thread,
        )
        for text in _user_turns(code):
            memory.put(ChatMessage(role="user", content=text))
            prompt = memory.get()
            recalled[(name, thread)] = _check_prompt(prompt, text)
            memory.put(ChatMessage(role="assistant", content="Noted, happy to help with that."))
        assert prompt[-2].additional_kwargs.get("graphthrift_recall") is True
    _own_code_only(recalled)


async def test_llamaindex_memory_block_recalls_within_its_tenant_and_session(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """``HistoryMemoryBlock`` in a real ``Memory``: the turns Memory flushes are kept under
    (tenant, session id), and the block's content brings the fact back for the question,
    in its own tenant and session only."""
    from llama_index.core.memory import Memory

    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    recalled: dict[tuple[str, str], str] = {}
    for name, session, code in SCOPES:
        block = HistoryMemoryBlock(
            max_summary_tokens=24, recall=turns, tenant_id=tenant + name, recall_tokens=64
        )
        memory = Memory.from_defaults(
            session_id=f"{session}-{tenant}",
            token_limit=400,
            chat_history_token_ratio=0.3,
            token_flush_size=60,
            memory_blocks=[block],
        )
        for text in _user_turns(code):
            await memory.aput(ChatMessage(role="user", content=text))
            view = await memory.aget()
            await memory.aput(ChatMessage(role="assistant", content="Noted, happy to help."))
        state = block.states[f"{session}-{tenant}"]
        assert state["folded_total"] > 0, "Memory flushed turns into the block"
        assert view[-1].content == QUESTION  # the question is still the latest message
        system = view[0].content or ""
        assert view[0].role.value == "system" and "Recalled from earlier" in system
        recalled[(name, session)] = system.split("Recalled from earlier", 1)[1]
    _own_code_only(recalled)


async def test_llamaindex_memory_block_without_recall_keeps_nothing(
    turns: FoldedTurnStore, tenant: str
) -> None:
    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    block = HistoryMemoryBlock(max_summary_tokens=24)
    await block.aput(
        [ChatMessage(role="user", content="My gym locker code is 4417.")], session_id="plain"
    )
    content = await block.aget([ChatMessage(role="user", content=QUESTION)], session_id="plain")
    assert "Recalled from earlier" not in content
    assert turns.recall(tenant, "plain", QUESTION) == []


async def test_memory_block_truncation_shortens_the_summary_before_the_recalled_turns() -> None:
    """When ``Memory`` shortens the block, the recalled turns (what the latest question
    needs) are kept whole and the summary is cut; with no room for both, the summary goes
    and the recall header stays with as many whole turns as fit."""
    from graphthrift.history.recall import RecalledSnippet
    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    block = HistoryMemoryBlock()
    model = block.pruner.model
    summary = "\n".join(
        f"User: order A-{k:03d} ships to Lisbon on May {k % 28 + 1}." for k in range(40)
    )
    snippets = [
        RecalledSnippet(2, "user", "My locker combination is 31-07-55.", 12, 0.9, 1, 1.5),
        *(
            RecalledSnippet(
                10 + k, "assistant", f"Sure, here is a helpful reply {k}.", 10, 0.5, 0, 0.5
            )
            for k in range(5)
        ),
    ]
    recalled = block.pruner.render_recall(snippets).text
    content = f"{summary}\n\n{recalled}"
    total = count_text(content, model)
    cut = total - 160
    short = await block.atruncate(content, cut)
    assert short is not None and count_text(short, model) <= 160 + 2
    assert recalled in short  # every recalled turn, whole
    assert "tokens truncated]" in short.split(block.pruner.recall_prefix)[0]
    # room for the recall header and two turns only: the summary goes
    tight = count_text("\n".join(recalled.split("\n")[:3]), model)
    shortest = await block.atruncate(content, total - tight)
    assert shortest is not None and shortest.startswith(block.pruner.recall_prefix)
    assert "31-07-55" in shortest and "Lisbon" not in shortest
    assert count_text(shortest, model) <= tight


def test_llamaindex_memories_on_the_default_key_never_recall_each_other(
    turns: FoldedTurnStore, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two unrelated memories built without a thread id or chat_store_key share LlamaIndex's
    default key: neither recalls under it (the other's facts would come back), and the
    missing thread is counted and said once per pruner."""
    before = diagnostics.get("recall_no_thread")
    prompts: dict[str, str] = {}
    for name, code in (("alice", "4417"), ("bob", "9082")):
        memory = PrunedChatMemory.from_defaults(
            max_tokens=BUDGET, max_summary_tokens=40, recall=turns, tenant_id=tenant
        )
        with caplog.at_level("WARNING", logger="graphthrift"):
            caplog.clear()
            for text in _user_turns(code):
                memory.put(ChatMessage(role="user", content=text))
                prompt = memory.get()
                memory.put(ChatMessage(role="assistant", content="Noted, happy to help."))
        said = [r for r in caplog.records if "names no thread" in r.getMessage()]
        assert len(said) == 1, name
        prompts[name] = "\n".join(m.content or "" for m in prompt)
        assert all(not m.additional_kwargs.get("graphthrift_recall") for m in prompt)
    assert "4417" not in prompts["bob"]
    assert diagnostics.get("recall_no_thread") >= before + 2 * len(_user_turns("0"))
    assert turns.recall(tenant, "chat_history", "locker code", k=4) == []  # nothing kept


def test_llamaindex_memory_recalls_under_its_own_chat_store_key(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """A chat_store_key the user chose names the thread, as before."""
    memory = PrunedChatMemory.from_defaults(
        max_tokens=BUDGET,
        max_summary_tokens=40,
        recall=turns,
        tenant_id=tenant,
        chat_store_key="member-7",
    )
    for text in _user_turns("4417"):
        memory.put(ChatMessage(role="user", content=text))
        prompt = memory.get()
        memory.put(ChatMessage(role="assistant", content="Noted, happy to help."))
    assert "4417" in _check_prompt(prompt, QUESTION)
    assert turns.recall(tenant, "member-7", "locker code", k=4)


async def test_a_memory_block_built_again_for_a_session_extends_what_it_kept(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """``Memory`` keeps a session's messages across processes; the block's states are
    in-process. A block built again for the session (a restart, a block per request)
    numbers on from the turns the store keeps: it recalls them at once, and its own
    batches extend the session instead of replacing it."""
    from llama_index.core.memory import Memory

    from graphthrift.llamaindex.memory import HistoryMemoryBlock

    session = f"s-{tenant}"

    def memory() -> tuple[Memory, HistoryMemoryBlock]:
        block = HistoryMemoryBlock(
            max_summary_tokens=24, recall=turns, tenant_id=tenant, recall_tokens=64
        )
        built = Memory.from_defaults(
            session_id=session,
            token_limit=400,
            chat_history_token_ratio=0.3,
            token_flush_size=60,
            memory_blocks=[block],
        )
        return built, block

    first, block = memory()
    for text in _user_turns("4417")[:-1]:
        await first.aput(ChatMessage(role="user", content=text))
        await first.aput(ChatMessage(role="assistant", content="Noted, happy to help."))
    kept = block.states[session]["folded_total"]
    assert kept > 0
    rewrites = diagnostics.get("recall_thread_rewritten")

    again, fresh = memory()  # a new process: the same session, no state in the block
    await again.aput(ChatMessage(role="user", content=QUESTION))
    view = await again.aget()
    assert "4417" in (view[0].content or "")  # recalled before the new block folded anything
    for text in FILLER:
        await again.aput(ChatMessage(role="user", content=text))
        await again.aput(ChatMessage(role="assistant", content="Noted, happy to help."))
    assert fresh.states[session]["folded_total"] > kept  # it numbered on
    assert diagnostics.get("recall_thread_rewritten") == rewrites
    found = await turns.arecall(tenant, session, "gym locker code", k=4, token_budget=400)
    assert any("4417" in s.text for s in found)
