"""The cache behind LangChain's BaseCache, a LangGraph graph, create_agent and LlamaIndex."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.caches import BaseCache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from cache_helpers import bow_embedder, cache_graph
from graphthrift.cache import ExactCache, SemanticCache
from graphthrift.langchain.cache import as_langchain_cache
from graphthrift.store import Store

from fakes import usage_model


class ToolFakeChatModel(GenericFakeChatModel):
    """GenericFakeChatModel that accepts tools (it answers from its script regardless)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def _namespace() -> str:
    return f"lc-{uuid.uuid4().hex[:10]}"


class TestSemanticLangChainCache(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, store: Store) -> BaseCache:
        return as_langchain_cache(SemanticCache(store, namespace=_namespace()), single_tenant=True)


class TestExactLangChainCache(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, store: Store) -> BaseCache:
        return as_langchain_cache(ExactCache(store, namespace=_namespace()), single_tenant=True)


class TestAsyncSemanticLangChainCache(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, store: Store) -> BaseCache:
        return as_langchain_cache(SemanticCache(store, namespace=_namespace()), single_tenant=True)


def test_chat_model_with_cache_skips_the_second_call_and_books_savings(
    store: Store, tenant: str, ledger: Any
) -> None:
    cache = SemanticCache(store, bow_embedder(), tenant_id=tenant, ledger=ledger, threshold=0.9)
    model = usage_model("Refunds take 14 days.", input_tokens=300, output_tokens=20)
    model.cache = as_langchain_cache(cache, single_tenant=True)
    first = model.invoke([HumanMessage("How long do refunds take?")])
    second = model.invoke([HumanMessage("how long do refunds take")])
    assert first.content == second.content == "Refunds take 14 days."
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="cache_hit")
    assert row["model"] == "gpt-4o-mini" and row["input_tokens"] == 300 and row["saved_usd"] > 0


def test_langchain_cache_scopes_by_llm_string_and_skips_tool_calls(
    store: Store, tenant: str
) -> None:
    lc = as_langchain_cache(ExactCache(store, tenant_id=tenant), single_tenant=True)
    from langchain_core.outputs import ChatGeneration, Generation

    lc.update("hello", "model-a", [Generation(text="hi")])
    assert lc.lookup("hello", "model-a") == [Generation(text="hi")]
    assert lc.lookup("hello", "model-b") is None
    call = AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "1"}])
    lc.update("search x", "model-a", [ChatGeneration(message=call)])
    assert lc.lookup("search x", "model-a") is None


def test_langgraph_nodes_skip_the_model_on_a_hit(store: Store, tenant: str) -> None:
    cache = SemanticCache(store, bow_embedder(), threshold=0.9)
    calls: list[int] = []
    graph = cache_graph(
        cache, usage_model("We open at 9.", input_tokens=100, output_tokens=5), calls
    )
    config = {"metadata": {"tenant_id": tenant}}
    out1 = graph.invoke({"messages": [HumanMessage("When do you open?")]}, config)
    out2 = graph.invoke({"messages": [HumanMessage("when do you open")]}, config)
    assert len(calls) == 1
    assert out1["cache_hit"] is None and out2["cache_hit"]["layer"] == "semantic"
    assert out2["messages"][-1].content == "We open at 9."
    # another tenant does not see it
    graph.invoke(
        {"messages": [HumanMessage("when do you open")]}, {"metadata": {"tenant_id": tenant + "b"}}
    )
    assert len(calls) == 2


async def test_langgraph_nodes_async(store: Store, tenant: str) -> None:
    cache = ExactCache(store)
    calls: list[int] = []
    graph = cache_graph(
        cache, usage_model("We open at 9.", input_tokens=100, output_tokens=5), calls
    )
    config = {"metadata": {"tenant_id": tenant}}
    await graph.ainvoke({"messages": [HumanMessage("hours?")]}, config)
    out = await graph.ainvoke({"messages": [HumanMessage("Hours?")]}, config)
    assert len(calls) == 1 and out["cache_hit"]["layer"] == "exact"


def test_agent_middleware_answers_from_the_cache(store: Store, tenant: str) -> None:
    from langchain.agents import create_agent

    from graphthrift.middleware.cache import SemanticCacheMiddleware

    cache = SemanticCache(store, bow_embedder(), threshold=0.9)
    model = GenericFakeChatModel(messages=iter([AIMessage("Fees are 1%."), AIMessage("unused")]))
    agent = create_agent(model, middleware=[SemanticCacheMiddleware(cache)])
    config = {"metadata": {"tenant_id": tenant}}
    first = agent.invoke({"messages": [HumanMessage("What are the fees?")]}, config)
    second = agent.invoke({"messages": [HumanMessage("what are the fees")]}, config)
    assert first["messages"][-1].content == second["messages"][-1].content == "Fees are 1%."
    assert "graphthrift_cache" in second["messages"][-1].response_metadata


async def test_agent_middleware_does_not_store_tool_calls(store: Store, tenant: str) -> None:
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from graphthrift.middleware.cache import ExactCacheMiddleware

    @tool
    def rate(currency: str) -> str:
        """Exchange rate."""
        return "1.1"

    cache = ExactCache(store)
    call = AIMessage("", tool_calls=[{"name": "rate", "args": {"currency": "EUR"}, "id": "c1"}])
    model = ToolFakeChatModel(messages=iter([call, AIMessage("1 EUR = 1.1 USD")]))
    agent = create_agent(model, tools=[rate], middleware=[ExactCacheMiddleware(cache)])
    config = {"metadata": {"tenant_id": tenant}}
    out = await agent.ainvoke({"messages": [HumanMessage("EUR rate?")]}, config)
    assert out["messages"][-1].content == "1 EUR = 1.1 USD"
    # the tool-call step was not stored; the final answer was not stored either (it came
    # after a tool result, mid-loop), so nothing is served for the question
    assert await cache.alookup("EUR rate?", tenant_id=tenant) is None


def test_llamaindex_query_engine_answers_from_the_cache(store: Store, tenant: str) -> None:
    from llama_index.core.base.base_query_engine import BaseQueryEngine
    from llama_index.core.base.response.schema import Response
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import NodeWithScore, TextNode

    from graphthrift.llamaindex.cache import CachedQueryEngine

    class Engine(BaseQueryEngine):
        def __init__(self) -> None:
            self.calls = 0
            super().__init__(CallbackManager([]))

        def _get_prompt_modules(self) -> dict[str, Any]:
            return {}

        def _query(self, query_bundle: Any) -> Response:
            self.calls += 1
            node = NodeWithScore(node=TextNode(text="Refunds: 14 days.", id_="doc-7"), score=1.0)
            return Response(response="14 days.", source_nodes=[node])

        async def _aquery(self, query_bundle: Any) -> Response:
            return self._query(query_bundle)

    inner = Engine()
    engine = CachedQueryEngine(
        inner,
        SemanticCache(store, bow_embedder(), threshold=0.9),
        tenant_id=tenant,
        corpus_version="v1",
    )
    assert str(engine.query("What is the refund window?")) == "14 days."
    cached = engine.query("what is the refund window")
    assert str(cached) == "14 days." and inner.calls == 1
    assert cached.metadata["graphthrift_cache"]["evidence_ids"] == ["doc-7"]
    rebuilt = CachedQueryEngine(
        inner,
        SemanticCache(store, bow_embedder(), threshold=0.9),
        tenant_id=tenant,
        corpus_version="v2",
    )
    rebuilt.query("what is the refund window")
    assert inner.calls == 2  # a new corpus version never sees old answers


def test_old_adapter_names_warn_and_still_work(store: Store, tenant: str) -> None:
    from graphthrift.langchain.cache import GraphthriftLangChainCache
    from graphthrift.langgraph import cache_lookup, cache_store
    from graphthrift.middleware import CacheMiddleware, ExactCacheMiddleware

    cache = ExactCache(store, tenant_id=tenant, namespace=_namespace())
    with pytest.warns(DeprecationWarning, match="lookup_cache"):
        lookup = cache_lookup(cache)
    with pytest.warns(DeprecationWarning, match="cache_answer"):
        store_node = cache_store(cache)
    with pytest.warns(DeprecationWarning, match="ExactCacheMiddleware"):
        middleware = CacheMiddleware(cache)
    # the core builds no adapter: the LangChain cache is graphthrift.langchain's to build
    assert not hasattr(cache, "as_langchain_cache")
    lc = as_langchain_cache(cache, single_tenant=True)
    assert isinstance(middleware, ExactCacheMiddleware)
    assert isinstance(lc, GraphthriftLangChainCache)
    question = [HumanMessage("hours?"), AIMessage("9 to 5.")]
    store_node.invoke({"messages": question, "cache_hit": {}})
    out = lookup.invoke({"messages": question[:1], "cache_hit": {}})
    assert out["cache_hit"]["answer"] == "9 to 5."
