"""The cache composed with agents: never a foreign, stale, own or meaning-changed answer.

Issues 11 (items 2, 3, 4, 5, 7, 9, 10) and 12 (items 2, 3, 7, 12): each test failed before
its fix.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph

import graphthrift
from cache_helpers import bow_embedder, cache_graph
from graphthrift import diagnostics
from graphthrift.budget import Budget
from graphthrift.cache import ExactCache, SemanticCache, lexical_conflict, normalize_query
from graphthrift.embed.embedders import MiniLMEmbedder
from graphthrift.errors import StateSchemaError
from graphthrift.langchain.cache import as_langchain_cache
from graphthrift.langchain.callbacks import CostTagger
from graphthrift.langgraph.cache import CacheState, cache_answer, lookup_cache
from graphthrift.middleware.budget import BudgetMiddleware
from graphthrift.middleware.cache import ExactCacheMiddleware, SemanticCacheMiddleware
from graphthrift.store import Store

from fakes import usage_model


class ToolFake(type(usage_model())):  # type: ignore[misc]
    """The fake chat model with usage, able to ``bind_tools``."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def _ns() -> str:
    return f"safe-{uuid.uuid4().hex[:10]}"


# -- 12.12a: only case and spaces are folded -------------------------------------------------


def test_exact_keys_keep_characters_that_change_the_meaning(store: Store, tenant: str) -> None:
    assert normalize_query("What is 2³?") != normalize_query("What is 23?")
    assert normalize_query("  WHAT is  2³ ") == normalize_query("what is 2³")
    cache = ExactCache(store, tenant_id=tenant, namespace=_ns())
    cache.update("What is 2³?", "8")
    assert cache.lookup("What is 23?") is None
    hit = cache.lookup("what is  2³")
    assert hit is not None and hit.answer == "8"


# -- 11.3: a follow-up is keyed on its conversation and its user ------------------------------


def test_follow_up_answers_never_cross_users_but_faq_answers_do(store: Store, tenant: str) -> None:
    cache = ExactCache(store, namespace=_ns())
    model = usage_model("Your first order was A-101.")
    calls: list[int] = []
    graph = cache_graph(cache, model, calls)

    def ask(user: str, turns: list[Any]) -> str:
        out = graph.invoke(
            {"messages": turns}, {"metadata": {"tenant_id": tenant, "user_id": user}}
        )
        return str(out["messages"][-1].content)

    alice = [
        HumanMessage("Where is order A-101?"),
        AIMessage("Shipped."),
        HumanMessage("What was the first order I asked about?"),
    ]
    bob = [
        HumanMessage("Where is order B-7?"),
        AIMessage("Delivered."),
        HumanMessage("What was the first order I asked about?"),
    ]
    ask("alice", alice)
    assert len(calls) == 1
    ask("bob", bob)  # other earlier turns: never Alice's answer
    assert len(calls) == 2
    ask("bob", alice)  # the same turns, but another user: still a miss
    assert len(calls) == 3
    ask("alice", alice)  # Alice again: a hit
    assert len(calls) == 3
    # a first-turn FAQ question is shared by the tenant's users
    ask("alice", [HumanMessage("What are your opening hours?")])
    ask("bob", [HumanMessage("what are your opening hours")])
    assert len(calls) == 4


# -- 11.2: graphthrift's own messages, errors and refusals are never stored --------------------


def test_a_budget_refusal_is_never_cached(store: Store, tenant: str) -> None:
    cache = SemanticCache(store, bow_embedder(), namespace=_ns(), threshold=0.9)
    budget = Budget(store, max_tokens={"tenant": 600}, max_output_tokens=200)
    tags = {"tenant_id": tenant}
    r = budget.reserve("gpt-4o-mini", input_tokens=1, max_output_tokens=1, tags=tags)
    budget.settle(r, input_tokens=590, output_tokens=0)  # used up
    model = usage_model("Refunds take 14 days.", input_tokens=30, output_tokens=10)
    agent = create_agent(
        model, middleware=[SemanticCacheMiddleware(cache), BudgetMiddleware(budget)]
    )
    out = agent.invoke(
        {"messages": [HumanMessage("How long do refunds take?")]}, {"metadata": tags}
    )
    assert "graphthrift_budget" in out["messages"][-1].response_metadata
    assert cache.lookup("How long do refunds take?", tenant_id=tenant) is None
    # room again: the model answers, and that answer is what gets cached
    roomy = Budget(store, max_tokens={"tenant": 10_000_000}, max_output_tokens=200)
    agent = create_agent(
        model, middleware=[SemanticCacheMiddleware(cache), BudgetMiddleware(roomy)]
    )
    out = agent.invoke(
        {"messages": [HumanMessage("How long do refunds take?")]}, {"metadata": tags}
    )
    assert out["messages"][-1].content == "Refunds take 14 days."
    hit = cache.lookup("how long do refunds take", tenant_id=tenant)
    assert hit is not None and hit.answer == "Refunds take 14 days."


@pytest.mark.parametrize(
    "answer",
    [
        AIMessage("I can't help with that.", response_metadata={"finish_reason": "content_filter"}),
        AIMessage("", additional_kwargs={"refusal": "I refuse."}),
        AIMessage("Sorry.", response_metadata={"stop_reason": "refusal"}),
        AIMessage("I have to stop here.", response_metadata={"graphthrift_own": "budget"}),
        AIMessage("We are open 9:00", response_metadata={"finish_reason": "length"}),
        AIMessage("We are open 9:00", response_metadata={"stop_reason": "max_tokens"}),
    ],
    ids=["content_filter", "openai_refusal", "anthropic_refusal", "own", "length", "max_tokens"],
)
def test_refusals_filters_and_own_messages_are_never_stored(
    store: Store, tenant: str, answer: AIMessage
) -> None:
    cache = ExactCache(store, namespace=_ns())
    calls: list[int] = []
    graph = cache_graph(cache, GenericFakeChatModel(messages=iter([answer, answer])), calls)
    config = {"metadata": {"tenant_id": tenant}}
    graph.invoke({"messages": [HumanMessage("Tell me the secret.")]}, config)
    graph.invoke({"messages": [HumanMessage("Tell me the secret.")]}, config)
    assert len(calls) == 2
    assert cache.update("q", "a", source=answer, tenant_id=tenant) is None


def test_a_degraded_turn_is_not_stored_by_the_langgraph_node(store: Store, tenant: str) -> None:
    class State(CacheState):
        budget_status: str

    cache = ExactCache(store, namespace=_ns())
    node = cache_answer(cache)
    state = {
        "messages": [HumanMessage("Summarize my account."), AIMessage("Cheap summary.")],
        "cache_hit": None,
        "budget_status": "degraded",
    }
    node.invoke(state, {"metadata": {"tenant_id": tenant}})
    assert cache.lookup("Summarize my account.", tenant_id=tenant) is None
    node.invoke({**state, "budget_status": "ok"}, {"metadata": {"tenant_id": tenant}})
    assert cache.lookup("Summarize my account.", tenant_id=tenant) is not None
    assert State.__annotations__  # the documented way to add the key


# -- 11.4: tool calls are replayed faithfully, or refused ------------------------------------


def test_a_cached_tool_turn_is_replayed_with_its_tool_calls(store: Store, tenant: str) -> None:
    runs: list[str] = []

    @tool
    def order_status(order_id: str) -> str:
        """The status of an order."""
        runs.append(order_id)
        return f"{order_id}: shipped, eta June 3"

    def call() -> AIMessage:
        return AIMessage(
            "",
            tool_calls=[{"name": "order_status", "args": {"order_id": "A-101"}, "id": "c1"}],
        )

    cache = ExactCache(store, namespace=_ns(), cache_tool_calls=True)
    model = ToolFake(
        messages=iter([call(), AIMessage("A-101 ships June 3."), AIMessage("A-101 ships June 3.")])
    )
    agent = create_agent(model, tools=[order_status], middleware=[ExactCacheMiddleware(cache)])
    config = {"metadata": {"tenant_id": tenant}}
    first = agent.invoke({"messages": [HumanMessage("Where is my order A-101?")]}, config)
    second = agent.invoke({"messages": [HumanMessage("Where is my order A-101?")]}, config)
    assert first["messages"][-1].content == second["messages"][-1].content == "A-101 ships June 3."
    replayed = second["messages"][1]
    assert "graphthrift_cache" in replayed.response_metadata
    assert replayed.tool_calls[0]["args"] == {"order_id": "A-101"}
    assert replayed.tool_calls[0]["id"] != first["messages"][1].tool_calls[0]["id"]
    assert runs == ["A-101", "A-101"]  # the tool ran again: a fresh outcome


def test_langgraph_nodes_refuse_a_cache_that_stores_tool_calls(store: Store) -> None:
    cache = ExactCache(store, namespace=_ns(), cache_tool_calls=True)
    with pytest.raises(ValueError, match="cache_tool_calls=True"):
        lookup_cache(cache)
    with pytest.raises(ValueError, match="cache_tool_calls=True"):
        cache_answer(cache)


# -- 11.7: the nodes need their state keys ---------------------------------------------------


def test_cache_nodes_on_plain_messages_state_raise_naming_the_schema(store: Store) -> None:
    graph = cache_graph(ExactCache(store, namespace=_ns()), usage_model(), [], state=MessagesState)
    with pytest.raises(StateSchemaError, match="CacheState"):
        graph.invoke({"messages": [HumanMessage("hours?")]})


def test_cache_state_graph_hits_on_the_second_run(store: Store, tenant: str) -> None:
    calls: list[int] = []
    graph = cache_graph(ExactCache(store, namespace=_ns()), usage_model(), calls)
    config = {"metadata": {"tenant_id": tenant}}
    graph.invoke({"messages": [HumanMessage("hours?")]}, config)
    out = graph.invoke({"messages": [HumanMessage("hours?")]}, config)
    assert len(calls) == 1 and out["cache_hit"]["layer"] == "exact"


# -- 11.9: the lexical guard -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cached", "query", "reason"),
    [
        ("Is the store open on Sunday?", "Is the store open on Monday?", "dates"),
        ("What is the fee in March?", "What is the fee in April?", "dates"),
        ("Transfer 50 euros", "Transfer 500 euros", "numbers"),
        ("Where is order AB12?", "Where is order AB13?", "numbers"),
        ("Where is order XK9Q?", "Where is order XK9R?", "identifiers"),
        ("My card works abroad", "My card does not work abroad", "negation"),
        ("I can log in", "I can't log in", "negation"),
        ("Does Acme ship to Paris?", "Does Acme ship to London?", "entities"),
        ("Do you ship before Christmas?", "Do you ship after Christmas?", "opposites"),
        ("Is it safe to take ibuprofen with alcohol?", "Is it unsafe to take it?", "opposites"),
        # a new-user trial had these served the cached answer (2026-12-01)
        ("Can I get a refund within 30 days?", "Can I get a refund within 30 weeks?", "units"),
        ("Can I get a refund within 30 days?", "Can I get a refund within 30 hours?", "units"),
        ("Refund within 30 days?", "Refund within 30 business days?", "units"),
        ("Can I get a refund within 30 days?", "Can I get a refund after 30 days?", "opposites"),
        ("Do you ship to Canada?", "Do you ship from Canada?", "opposites"),
        ("How do I log in?", "How do I log out?", "opposites"),
        ("Can I get a refund within 30 days?", "can I get a refund within 30 days", None),
        ("How do I reset my password?", "how can I reset my PASSWORD", None),
        ("Can I use my card in the UK?", "can i use my card in the uk", None),
    ],
)
def test_lexical_guard_rejects_meaning_changes(cached: str, query: str, reason: str) -> None:
    assert lexical_conflict(cached, query) == reason


def test_semantic_hits_that_change_the_meaning_are_refused(store: Store, tenant: str) -> None:
    guarded = SemanticCache(store, bow_embedder(), namespace=_ns(), tenant_id=tenant, threshold=0.5)
    guarded.update("Is the store open on Sunday?", "No, closed on Sundays.")
    before = diagnostics.get("cache_guard_reject")
    assert guarded.lookup("Is the store open on Monday?") is None
    assert diagnostics.get("cache_guard_reject") == before + 1
    assert guarded.lookup("is the store open on sunday") is not None
    unguarded = SemanticCache(
        store, bow_embedder(), namespace=guarded.defaults.namespace, tenant_id=tenant,
        threshold=0.5, lexical_guard=False,
    )  # fmt: skip
    assert unguarded.lookup("Is the store open on Monday?") is not None


# -- 11.10: no silent no-ops -----------------------------------------------------------------


def test_exact_feedback_false_stops_serving_the_entry(store: Store, tenant: str) -> None:
    cache = ExactCache(store, namespace=_ns(), tenant_id=tenant)
    cache.update("What is the fee?", "Wrong: 99%.")
    hit = cache.lookup("What is the fee?")
    assert hit is not None
    cache.feedback(hit, correct=False)
    assert cache.lookup("What is the fee?") is None
    with pytest.raises(ValueError, match="semantic hit"):
        cache.feedback("semantic:1:0.950000", correct=True)


def test_semantic_middleware_refuses_an_exact_cache(store: Store) -> None:
    with pytest.raises(TypeError, match="CacheMiddleware"):
        SemanticCacheMiddleware(ExactCache(store))
    assert ExactCacheMiddleware(ExactCache(store)).cache is not None


# -- 11.5: LlamaIndex query engine and postprocessor follow tags() ----------------------------


def _engine() -> Any:
    from llama_index.core.base.base_query_engine import BaseQueryEngine
    from llama_index.core.base.response.schema import Response
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import NodeWithScore, TextNode

    class Engine(BaseQueryEngine):
        def __init__(self) -> None:
            self.calls = 0
            super().__init__(CallbackManager([]))

        def _get_prompt_modules(self) -> dict[str, Any]:
            return {}

        def _query(self, query_bundle: Any) -> Response:
            self.calls += 1
            text = f"Balance: ${5000 * self.calls}."
            node = NodeWithScore(node=TextNode(text=text, id_=f"doc-{self.calls}"), score=1.0)
            return Response(response=text, source_nodes=[node])

        async def _aquery(self, query_bundle: Any) -> Response:
            return self._query(query_bundle)

    return Engine()


def test_llamaindex_engine_scopes_and_books_hits_by_tags(
    store: Store, tenant: str, ledger: Any
) -> None:
    from graphthrift.llamaindex import tags
    from graphthrift.llamaindex.cache import CachedQueryEngine

    inner = _engine()
    cache = ExactCache(store, namespace=_ns(), ledger=ledger)
    engine = CachedQueryEngine(inner, cache, model="gpt-4o-mini")
    with tags(tenant_id=tenant, feature="balance"):
        acme = str(engine.query("What is my balance?"))
    with tags(tenant_id=tenant + "-globex"):
        globex = str(engine.query("What is my balance?"))
    assert inner.calls == 2 and acme != globex
    with tags(tenant_id=tenant, feature="balance"):
        assert str(engine.query("what is my balance")) == acme
    assert inner.calls == 2
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="cache_hit")
    assert row["feature"] == "balance" and row["saved_usd"] > 0


def test_llamaindex_engine_never_stores_an_empty_response(store: Store, tenant: str) -> None:
    from llama_index.core.base.response.schema import Response

    from graphthrift.llamaindex.cache import CachedQueryEngine

    inner = _engine()
    inner._query = lambda query_bundle: Response(response="Empty Response")  # type: ignore[method-assign]
    cache = ExactCache(store, namespace=_ns(), tenant_id=tenant)
    CachedQueryEngine(inner, cache).query("What is in the empty index?")
    assert cache.lookup("What is in the empty index?") is None


def test_compression_postprocessor_rows_carry_the_tags(tenant: str, ledger: Any) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from graphthrift.llamaindex import tags
    from graphthrift.llamaindex.postprocessor import CompressionPostprocessor

    pp = CompressionPostprocessor(target_ratio=0.5, embedder=False, ledger=ledger)
    nodes = [
        NodeWithScore(node=TextNode(text="Paris is in France. Rome is in Italy. " * 5), score=1)
    ]
    with tags(tenant_id=tenant, feature="rag"):
        pp.postprocess_nodes(nodes, query_str="Where is Rome?")
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="compression")
    assert rows and rows[0]["feature"] == "rag"


# -- 12.2 / 12.3: LangChain BaseCache -----------------------------------------------------------


def test_langchain_cache_never_serves_another_tenant(store: Store, tenant: str) -> None:
    cache = SemanticCache(store, bow_embedder(), namespace=_ns(), tenant_id="acme", threshold=0.9)
    model = usage_model("Your balance is $5,000.")
    model.cache = as_langchain_cache(cache)
    other = usage_model("Your balance is $12.")
    other.cache = model.cache
    acme = {"metadata": {"tenant_id": tenant}, "callbacks": [CostTagger(_NoLedger())]}
    globex = {"metadata": {"tenant_id": tenant + "-globex"}, "callbacks": [CostTagger(_NoLedger())]}
    assert model.invoke("What is my balance?", acme).content == "Your balance is $5,000."
    assert other.invoke("What is my balance?", globex).content == "Your balance is $12."
    assert other.invoke("what is my balance", acme).content == "Your balance is $5,000."
    # no scope known: a miss (counted), never the default tenant's answer
    before = diagnostics.get("cache_unscoped")
    assert other.invoke("What is my balance?").content == "Your balance is $12."
    assert diagnostics.get("cache_unscoped") > before
    # graphthrift.scoped(...) names the tenant for code with no callbacks
    with graphthrift.scoped(tenant_id=tenant + "-globex"):
        assert model.invoke("what is my balance").content == "Your balance is $12."


def test_langchain_cache_reads_the_scope_of_the_enclosingcache_graph(
    store: Store, tenant: str
) -> None:
    cache = ExactCache(store, namespace=_ns())
    answers = iter(["acme answer", "globex answer", "unused"])
    model = GenericFakeChatModel(messages=answers)
    model.cache = as_langchain_cache(cache)

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", node)
    graph.add_edge(START, "agent")
    app = graph.compile()
    for who, expected in (("", "acme answer"), ("-g", "globex answer"), ("", "acme answer")):
        out = app.invoke({"messages": [("user", "hi")]}, {"metadata": {"tenant_id": tenant + who}})
        assert out["messages"][-1].content == expected


class _NoLedger:
    """A ledger that keeps records in memory (CostTagger only calls ``record``)."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def record(self, record: Any) -> None:
        self.rows.append(record)


def test_a_base_cache_hit_is_booked_once(store: Store, tenant: str, ledger: Any) -> None:
    cache = ExactCache(store, namespace=_ns(), ledger=ledger)
    model = usage_model("Refunds take 14 days.", input_tokens=300, output_tokens=20)
    model.cache = as_langchain_cache(cache)
    config = {"metadata": {"tenant_id": tenant}, "callbacks": [CostTagger(ledger)]}
    model.invoke("How long do refunds take?", config)
    model.invoke("How long do refunds take?", config)
    ledger.flush()
    calls = ledger.records(tenant_id=tenant, kind="llm")
    hits = ledger.records(tenant_id=tenant, kind="cache_hit")
    assert len(calls) == 1 and len(hits) == 1
    assert hits[0]["saved_usd"] == pytest.approx(calls[0]["cost_usd"])


# -- 12.7: bad provider usage ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, "12", -5])
def test_bad_usage_never_crashes_a_store(store: Store, tenant: str, bad: Any) -> None:
    answer = AIMessage("Fine.", response_metadata={"model_name": "gpt-4o-mini"})
    object.__setattr__(answer, "usage_metadata", {"input_tokens": bad, "output_tokens": bad})
    cache = ExactCache(store, namespace=_ns())
    state = {"messages": [HumanMessage("ok?"), answer], "cache_hit": None}
    cache_answer(cache).invoke(state, {"metadata": {"tenant_id": tenant}})
    hit = cache.lookup("ok?", tenant_id=tenant)
    assert hit is not None and hit.input_tokens == 0
    # the middleware and the BaseCache read usage the same way
    model = GenericFakeChatModel(messages=iter([answer]))
    agent = create_agent(model, middleware=[ExactCacheMiddleware(cache)])
    agent.invoke({"messages": [HumanMessage("fine?")]}, {"metadata": {"tenant_id": tenant}})
    assert cache.lookup("fine?", tenant_id=tenant) is not None
    from langchain_core.outputs import ChatGeneration

    lc = as_langchain_cache(cache, single_tenant=True)
    lc.update("bad usage", "llm", [ChatGeneration(message=answer)])
    assert lc.lookup("bad usage", "llm") is not None


# -- 11.7 / 11.10: the README quickstart holds when run twice ---------------------------------


def test_readme_quickstart_passes_when_run_twice(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    import sys
    import types
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        module = types.ModuleType("readme_quickstart")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(block.group(1), "README.md", "exec"), module.__dict__)


async def test_async_langchain_cache_scopes_by_the_tagged_run(
    store: Store, tenant: str, ledger: Any
) -> None:
    cache = ExactCache(store, namespace=_ns(), ledger=ledger)
    acme_model = usage_model("acme: $5,000.")
    globex_model = usage_model("globex: $12.")
    acme_model.cache = globex_model.cache = as_langchain_cache(cache)

    def config(who: str) -> dict[str, Any]:
        return {"metadata": {"tenant_id": tenant + who}, "callbacks": [CostTagger(ledger)]}

    assert (await acme_model.ainvoke("balance?", config(""))).content == "acme: $5,000."
    assert (await globex_model.ainvoke("balance?", config("-g"))).content == "globex: $12."
    assert (await globex_model.ainvoke("balance?", config(""))).content == "acme: $5,000."
    ledger.flush()
    assert len(ledger.records(tenant_id=tenant, kind="llm")) == 1
    assert len(ledger.records(tenant_id=tenant, kind="cache_hit")) == 1


# -- composed: a create_agent agent with a checkpointer, 2 tenants x 2 users ------------------


@pytest.mark.parametrize("mode", ["invoke", "stream", "astream"])
async def test_composed_agent_never_serves_foreign_or_own_answers(
    store: Store, tenant: str, mode: str
) -> None:
    import itertools
    import random

    from langgraph.checkpoint.memory import InMemorySaver

    from fakes import UsageFakeChatModel

    usage = {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}
    answers = (
        AIMessage(
            f"answer#{i}", usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"}
        )
        for i in itertools.count()
    )
    model = UsageFakeChatModel(messages=answers, usage=usage, model_name="gpt-4o-mini")
    cache = SemanticCache(store, bow_embedder(), namespace=_ns(), threshold=0.9, timeout=5.0)
    budget = Budget(store, max_tokens={"tenant": 1500}, max_output_tokens=50)
    agent = create_agent(
        model,
        middleware=[SemanticCacheMiddleware(cache), BudgetMiddleware(budget)],
        checkpointer=InMemorySaver(),
    )
    questions = ["What are your opening hours?", "What was my first question?", "Any fees?"]
    produced: dict[str, tuple[str, str]] = {}  # answer -> (tenant, user) it was produced for
    rng = random.Random(11)
    served = served_follow_ups = 0
    for conversation in range(16):
        who = (tenant + rng.choice(["-a", "-b"]), rng.choice(["alice", "bob"]))
        config = {
            "configurable": {"thread_id": f"{tenant}:{conversation}"},
            "metadata": {"tenant_id": who[0], "user_id": who[1]},
        }
        for turn in range(rng.choice([1, 2, 2])):
            state = {"messages": [HumanMessage(rng.choice(questions))]}
            if mode == "invoke":
                agent.invoke(state, config)
            elif mode == "stream":
                for _chunk in agent.stream(state, config, stream_mode="messages"):
                    pass
            else:
                async for _chunk in agent.astream(state, config):
                    pass
            last = agent.get_state(config).values["messages"][-1]
            text = str(last.content)
            if "graphthrift_cache" in last.response_metadata:
                served += 1
                assert not text.startswith("I have to stop"), "a budget refusal was served"
                producer = produced[text]
                assert producer[0] == who[0], f"{text} crossed tenants"
                if turn > 0:  # a follow-up: it may depend on who asks
                    served_follow_ups += 1
                    assert producer[1] == who[1], f"{text} crossed users in a follow-up"
            elif text.startswith("answer#"):
                produced[text] = who
    assert served > 0 and served_follow_ups > 0  # the invariants were exercised


def test_cache_request_keeps_the_user_apart_unless_a_scope_is_explicit() -> None:
    from graphthrift.kernel import cache_request, current_run_tags

    meta = {"metadata": {"tenant_id": "acme", "user_id": "alice", "corpus_version": "v2"}}
    assert cache_request(meta) == {"tenant_id": "acme", "user_id": "alice", "corpus_version": "v2"}
    explicit = {"metadata": {"tenant_id": "acme", "user_id": "alice", "scope": "admins"}}
    assert cache_request(explicit) == {"tenant_id": "acme", "scope": "admins"}
    with graphthrift.scoped(tenant_id="acme", user_id="bob"):
        with graphthrift.scoped(user_id="carol"):
            assert cache_request(None) == {"tenant_id": "acme", "user_id": "carol"}
        assert (current_run_tags() or {})["user_id"] == "bob"
    assert current_run_tags() is None


def test_a_slow_embedding_counts_inside_the_lookup_deadline(store: Any, tenant: str) -> None:
    """Issue 12, item 12: the lookup deadline covers embedding, so a slow embedder is a
    counted miss, not a lookup that runs past its deadline."""
    import time as _time

    slow = {"on": False}

    def embed(texts: list[str]) -> list[list[float]]:
        if slow["on"]:
            _time.sleep(0.3)
        return [[1.0, float(len(t) % 7), 0.5] for t in texts]

    cache = SemanticCache(store, namespace=f"slow-{tenant}", embedder=embed, timeout=0.1)
    cache.update("What is the refund window?", "30 days.", tenant_id=tenant)
    assert cache.lookup("What is the refund window?", tenant_id=tenant) is not None
    before = diagnostics.counters().get("cache_timeout", 0)
    slow["on"] = True
    assert cache.lookup("What is the refund window?", tenant_id=tenant) is None
    assert diagnostics.counters().get("cache_timeout", 0) == before + 1


class _SlowLoadingMiniLM(MiniLMEmbedder):
    """The real MiniLM, whose one-time load takes ``seconds`` longer."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.loads = 0

    def _build(self) -> tuple[Any, Any]:
        time.sleep(self.seconds)
        self.loads += 1
        return super()._build()


class _OwnLoad:
    """A user's embedder whose ``load`` means something else (a class method taking a path)."""

    model_id = "own-load"
    dim = 3

    @classmethod
    def load(cls, path: str) -> _OwnLoad:
        return cls()

    def embed(self, texts: Any) -> Any:
        import numpy as np

        return np.array([[1.0, float(len(t) % 7), 0.5] for t in texts], dtype=np.float32)

    async def aembed(self, texts: Any) -> Any:
        return self.embed(texts)


def test_a_user_embedder_s_own_load_is_left_alone(store: Any, tenant: str) -> None:
    cache = SemanticCache(store, namespace=f"own-{tenant}", embedder=_OwnLoad(), timeout=5.0)
    assert cache.lookup("What is the refund window?", tenant_id=tenant) is None
    cache.update("What is the refund window?", "30 days.", tenant_id=tenant)
    assert cache.lookup("What is the refund window?", tenant_id=tenant) is not None


@pytest.mark.parametrize("way", ["sync", "async"])
async def test_the_embedder_s_first_load_is_not_a_timed_out_lookup(
    store: Any, tenant: str, way: str
) -> None:
    """A model's one-time load is startup, not lookup time: the first lookup of a fresh
    cache loads it before its deadline starts, instead of timing out into a miss (the
    README's whole-stack snippets warned of a timeout on every first run)."""
    embedder = _SlowLoadingMiniLM(seconds=1.5)
    cache = SemanticCache(store, namespace=f"lazy-{tenant}-{way}", embedder=embedder, timeout=1.0)
    before = diagnostics.counters().get("cache_timeout", 0)
    if way == "sync":
        assert cache.lookup("What is the refund window?", tenant_id=tenant) is None
    else:
        assert await cache.alookup("What is the refund window?", tenant_id=tenant) is None
    assert diagnostics.counters().get("cache_timeout", 0) == before  # a plain miss
    assert embedder.loads == 1
    cache.update("What is the refund window?", "30 days.", tenant_id=tenant)
    assert cache.lookup("What is the refund window?", tenant_id=tenant) is not None


@pytest.mark.parametrize("layer", ["exact", "semantic"])
def test_bad_text_in_a_question_is_repaired_and_in_a_scope_skipped(
    store: Any, tenant: str, layer: str
) -> None:
    """Issue 12, item 12: a lone surrogate or NUL never crashes a cache. In the question it is
    repaired (counted); in a scope field no entry is read or written, since a repaired id
    could be another tenant's."""
    cls = ExactCache if layer == "exact" else SemanticCache
    kwargs: dict[str, Any] = {} if layer == "exact" else {"embedder": bow_embedder()}
    cache = cls(store, namespace=f"bad-{tenant}", timeout=5.0, **kwargs)
    before = diagnostics.counters()
    entry = cache.update("caf\udce9 open?", "Yes.", tenant_id=tenant, model="gpt-4o-mini")
    assert entry is not None
    hit = cache.lookup("caf\udce9 open?", tenant_id=tenant)
    assert hit is not None and hit.answer == "Yes."
    assert cache.update("q?", "a.", tenant_id=tenant + "\udce9") is None
    assert cache.lookup("q?", tenant_id=tenant + "\ud800") is None
    assert cache.lookup("q?", tenant_id=tenant, scope="ali\x00ce") is None
    after = diagnostics.counters()
    assert after.get("cache_bad_scope", 0) - before.get("cache_bad_scope", 0) == 3
    assert after.get("text_repaired", 0) > before.get("text_repaired", 0)


class _NamedModel(BaseChatModel):
    """Answers one fixed text, with usage and a model name (the budget prices it)."""

    text: str
    model_name: str = "gpt-4o"

    @property
    def _llm_type(self) -> str:
        return "named-fake"

    def _generate(
        self, messages: list[Any], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        message = AIMessage(
            self.text,
            response_metadata={"model_name": self.model_name},
            usage_metadata={"input_tokens": 50, "output_tokens": 10, "total_tokens": 60},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_a_degraded_answer_is_not_stored_by_a_cache_inside_the_budget(
    store: Any, tenant: str
) -> None:
    """Issue 11, item 2 (found by an outside probe): with the budget outside the cache, the
    degraded answer was stored before the budget marked it, then served at full price later."""
    strong = _NamedModel(text="STRONG full answer", model_name="gpt-4o")
    cheap = _NamedModel(text="cheap degraded answer", model_name="gpt-4o-mini")
    budget = BudgetMiddleware(
        Budget(store, max_request_usd=0.002, ladder=["cheaper_model", "end"]), cheaper_model=cheap
    )
    cache = SemanticCacheMiddleware(SemanticCache(store, namespace=f"deg-{tenant}", timeout=5.0))
    agent = create_agent(strong, [], middleware=[budget, cache])
    config = {"metadata": {"tenant_id": tenant}}

    def ask() -> AIMessage:
        out = agent.invoke({"messages": [("user", "What are your opening hours?")]}, config)
        return out["messages"][-1]  # type: ignore[no-any-return]

    assert ask().content == "cheap degraded answer"
    budget.budget = Budget(store, max_tokens={"tenant": 10**9})
    second = ask()
    assert second.content == "STRONG full answer"
    assert "graphthrift_cache" not in second.response_metadata


def test_llamaindex_engine_never_stores_an_answer_its_budget_degraded(
    store: Any, tenant: str
) -> None:
    from llama_index.core.llms import ChatMessage, CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llama_index.core.query_engine import CustomQueryEngine

    from graphthrift.llamaindex import CachedQueryEngine, tags
    from graphthrift.llamaindex.budget import BudgetedLLM

    class EchoLLM(CustomLLM):
        answer: str = "DEGRADED"

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="gpt-4o-mini")

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            return CompletionResponse(text=self.answer)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
            raise NotImplementedError

    class Engine(CustomQueryEngine):
        llm: Any

        def custom_query(self, query_str: str) -> str:
            prompt = "Context: refunds are 30 days. Long policy text " * 20 + query_str
            return str(self.llm.complete(prompt))

    inner = EchoLLM()

    def summarize(messages: list[ChatMessage]) -> list[ChatMessage]:
        return [ChatMessage(role=m.role, content=str(m.content)[-100:]) for m in messages]

    llm = BudgetedLLM(
        llm=inner,
        budget=Budget(store, max_input_tokens=60, ladder=["summarize", "end"]),
        summarizer=summarize,
        model_name="gpt-4o-mini",
    )
    engine = CachedQueryEngine(
        Engine(llm=llm), SemanticCache(store, namespace=f"lideg-{tenant}", timeout=5.0)
    )
    with tags(tenant_id=tenant):
        assert str(engine.query("What is the refund window?")) == "DEGRADED"
        llm.budget = Budget(store, max_input_tokens=100_000)
        inner.answer = "FULL"
        assert str(engine.query("What is the refund window?")) == "FULL"


def test_an_answer_personalised_from_the_runtime_context_stays_with_its_user(
    store: Any, tenant: str
) -> None:
    """An outside probe: a ``dynamic_prompt`` inside the cache built a per-user prompt from
    ``runtime.context``; the cache keyed on the static prompt, so Bob got Alice's answer."""
    from dataclasses import dataclass

    from langchain.agents.middleware import ModelRequest, dynamic_prompt

    @dataclass
    class Ctx:
        user: str

    @dynamic_prompt
    def personal(request: ModelRequest) -> str:
        return (
            f"You are a shop assistant. The signed-in customer is {request.runtime.context.user}."
        )

    class Echo(_NamedModel):
        def _generate(
            self, messages: list[Any], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            name = str(messages[0].content).rsplit(" ", 1)[-1].rstrip(".")
            message = AIMessage(f"Hello {name}.", response_metadata={"model_name": "gpt-4o"})
            return ChatResult(generations=[ChatGeneration(message=message)])

    for cache in (
        SemanticCache(store, namespace=f"ctx-s-{tenant}", timeout=5.0),
        ExactCache(store, namespace=f"ctx-e-{tenant}", timeout=5.0),
    ):
        agent = create_agent(
            Echo(text=""),
            [],
            middleware=[ExactCacheMiddleware(cache), personal],
            context_schema=Ctx,
        )
        answers = {}
        for user in ("Alice", "Bob", "Bob"):
            config = {"metadata": {"tenant_id": tenant, "user_id": user}}
            out = agent.invoke(
                {"messages": [("user", "What is my name?")]}, config, context=Ctx(user)
            )
            answers.setdefault(user, []).append(out["messages"][-1])
        assert answers["Bob"][0].content == "Hello Bob."
        assert "graphthrift_cache" in answers["Bob"][1].response_metadata  # Bob's own entry


def test_one_store_serves_one_event_loop_after_another(store: Any, tenant: str) -> None:
    """An outside probe: the second ``asyncio.run`` with concurrent lookups raised 'bound to a
    different event loop' instead of answering (or failing open)."""
    import asyncio

    cache = ExactCache(store, namespace=f"loops-{tenant}", tenant_id=tenant, timeout=5.0)
    cache.update("q?", "a.", model="gpt-4o-mini", input_tokens=10, output_tokens=5)
    budget = Budget(store, max_usd={"tenant": 1.0})

    async def many() -> int:
        hits = await asyncio.gather(*[cache.alookup("q?") for _ in range(12)])
        reservation = await budget.areserve("gpt-4o-mini", [], tags={"tenant_id": tenant})
        await budget.asettle(reservation, input_tokens=1, output_tokens=1)
        return sum(h is not None for h in hits)

    assert [asyncio.run(many()) for _ in range(3)] == [12, 12, 12]
