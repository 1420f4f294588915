"""Every cache adapter reads scope, usage and the answering model through graphthrift.kernel.

One shape per adapter: a run whose tenant id is ``0`` (a valid id, not "unset"), whose
answer reports implausible usage (negative token counts) and names its model only as
``model_id`` (as Bedrock-style clients do). The entry must be stored under tenant "0",
with no token counts (never garbage) and the model ``kernel.answered_by`` reads; a reader
with a truthiness test, ``int(usage.get(...) or 0)`` or ``model_name``/``model`` alone
gets one of them wrong.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from cache_helpers import cache_graph
from graphthrift.cache import CacheHit, ExactCache, fingerprint
from graphthrift.store import Store

MODEL = "anthropic.claude-3-haiku"
QUESTION = "What are your opening hours?"


def _answer() -> AIMessage:
    return AIMessage(
        "We open at 9.",
        response_metadata={"model_id": MODEL},
        usage_metadata={"input_tokens": -40, "output_tokens": -3, "total_tokens": -43},
    )


def _cache(store: Store) -> ExactCache:
    return ExactCache(store, namespace=f"kernel-{uuid.uuid4().hex[:10]}")


def _stored(cache: ExactCache, model_version: str | None = None) -> CacheHit:
    assert cache.lookup(QUESTION, model_version=model_version) is None  # not under tenant ""
    hit = cache.lookup(QUESTION, tenant_id="0", model_version=model_version)
    assert hit is not None
    return hit


def _assert_read_by_kernel(hit: CacheHit) -> None:
    assert hit.tenant_id == "0"
    assert hit.model == MODEL
    assert (hit.input_tokens, hit.output_tokens) == (0, 0)


def test_middleware_reads_through_the_kernel(store: Store) -> None:
    from langchain.agents import create_agent

    from graphthrift.middleware.cache import ExactCacheMiddleware

    cache = _cache(store)
    model = GenericFakeChatModel(messages=iter([_answer()]))
    agent = create_agent(model, middleware=[ExactCacheMiddleware(cache)])
    agent.invoke({"messages": [HumanMessage(QUESTION)]}, {"metadata": {"tenant_id": 0}})
    _assert_read_by_kernel(_stored(cache))


def test_langgraph_nodes_read_through_the_kernel(store: Store) -> None:
    cache = _cache(store)
    calls: list[int] = []
    model = GenericFakeChatModel(messages=iter([_answer()]))
    graph = cache_graph(cache, model, calls)
    graph.invoke({"messages": [HumanMessage(QUESTION)]}, {"metadata": {"tenant_id": 0}})
    assert calls == [1]
    _assert_read_by_kernel(_stored(cache))


def test_langchain_cache_reads_through_the_kernel(store: Store) -> None:
    import graphthrift
    from graphthrift.langchain.cache import as_langchain_cache

    cache = _cache(store)
    model = GenericFakeChatModel(messages=iter([_answer()]))
    model.cache = as_langchain_cache(cache)
    with graphthrift.scoped(tenant_id=0):
        model.invoke([HumanMessage(QUESTION)])
    # the BaseCache keys each model and its parameters apart, in model_version
    version = fingerprint([model._get_llm_string()])
    _assert_read_by_kernel(_stored(cache, version))


def test_llamaindex_engine_reads_through_the_kernel(store: Store) -> None:
    from llama_index.core.base.base_query_engine import BaseQueryEngine
    from llama_index.core.base.response.schema import Response
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.llms.mock import MockLLM

    from graphthrift.llamaindex import tags
    from graphthrift.llamaindex.cache import CachedQueryEngine

    class NamedMockLLM(MockLLM):
        """A LlamaIndex LLM whose metadata says "unknown" but which names its model."""

        model_id: str = MODEL

    class Engine(BaseQueryEngine):
        def __init__(self) -> None:
            self._llm = NamedMockLLM()
            super().__init__(CallbackManager([]))

        def _get_prompt_modules(self) -> dict[str, Any]:
            return {}

        def _query(self, query_bundle: Any) -> Response:
            return Response(response="We open at 9.")

        async def _aquery(self, query_bundle: Any) -> Response:
            return self._query(query_bundle)

    cache = _cache(store)
    engine = CachedQueryEngine(Engine(), cache)
    with tags(tenant_id=0):
        engine.query(QUESTION)
    hit = _stored(cache)
    assert hit.tenant_id == "0" and hit.model == MODEL
    assert hit.input_tokens > 0  # estimated with tiktoken for the named model


# -- a hit's saving is booked to its run and thread, whichever adapter served it ---------


def _hit_row(ledger: Any, tenant: str) -> dict[str, Any]:
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="cache_hit")
    return dict(row)


def _booking_cache(store: Store, ledger: Any) -> ExactCache:
    return ExactCache(store, namespace=f"hit-tags-{uuid.uuid4().hex[:10]}", ledger=ledger)


def test_a_langgraph_hit_is_booked_to_its_thread_and_run(
    store: Store, ledger: Any, tenant: str
) -> None:
    calls: list[int] = []
    model = GenericFakeChatModel(messages=iter([AIMessage("We open at 9.")]))
    graph = cache_graph(_booking_cache(store, ledger), model, calls)
    for run in ("r-1", "r-2"):
        graph.invoke(
            {"messages": [HumanMessage(QUESTION)]},
            {
                "metadata": {"tenant_id": tenant, "run_id": run},
                "configurable": {"thread_id": "t-7"},
            },
        )
    assert calls == [1]
    row = _hit_row(ledger, tenant)
    assert (row["thread_id"], row["run_id"]) == ("t-7", "r-2")


def test_a_langchain_cache_hit_is_booked_to_its_thread_and_run(
    store: Store, ledger: Any, tenant: str
) -> None:
    import graphthrift
    from graphthrift.langchain.cache import as_langchain_cache

    model = GenericFakeChatModel(messages=iter([AIMessage("We open at 9.")]))
    model.cache = as_langchain_cache(_booking_cache(store, ledger))
    for run in ("r-1", "r-2"):  # the fake has one answer: the second call must be a hit
        with graphthrift.scoped(tenant_id=tenant, thread_id="t-8", run_id=run):
            model.invoke([HumanMessage(QUESTION)])
    row = _hit_row(ledger, tenant)
    assert (row["thread_id"], row["run_id"]) == ("t-8", "r-2")


def test_a_llamaindex_engine_hit_is_booked_to_its_thread(
    store: Store, ledger: Any, tenant: str
) -> None:
    from llama_index.core.base.base_query_engine import BaseQueryEngine
    from llama_index.core.base.response.schema import Response
    from llama_index.core.callbacks import CallbackManager

    from graphthrift.llamaindex import tags
    from graphthrift.llamaindex.cache import CachedQueryEngine

    answered: list[str] = []

    class Engine(BaseQueryEngine):
        def __init__(self) -> None:
            super().__init__(CallbackManager([]))

        def _get_prompt_modules(self) -> dict[str, Any]:
            return {}

        def _query(self, query_bundle: Any) -> Response:
            answered.append(str(query_bundle))
            return Response(response="We open at 9.")

        async def _aquery(self, query_bundle: Any) -> Response:
            return self._query(query_bundle)

    engine = CachedQueryEngine(Engine(), _booking_cache(store, ledger), model="gpt-4o-mini")
    for thread in ("t-8", "t-9"):  # LlamaIndex has threads (chat sessions), no run ids
        with tags(tenant_id=tenant, thread_id=thread):
            engine.query(QUESTION)
    assert len(answered) == 1
    assert _hit_row(ledger, tenant)["thread_id"] == "t-9"
