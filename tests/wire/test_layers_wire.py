"""Every layer with the real clients: what the provider's server receives is what we meant.

Caches must spare the wire, budgets must cap the output in the request body, the router must
name its model in the body, history pruning must send whole tool_use/tool_result pairs to
Anthropic, and LlamaIndex's OpenAI LLM must be booked like LangChain's clients.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from test_cost_tagger_wire import anthropic_chat, expected_cost, openai_chat, records
from wire_server import WireServer

from graphthrift import (
    Budget,
    CostTagger,
    ExactCache,
    Ledger,
    Router,
    SemanticCache,
    Store,
)
from graphthrift.langchain.cache import as_langchain_cache
from graphthrift.middleware import (
    BudgetMiddleware,
    HistoryPruningMiddleware,
    ModelRoutingMiddleware,
    SemanticCacheMiddleware,
)

CLIENTS = {"openai": openai_chat, "anthropic": anthropic_chat}
#: the body field each client caps output with
CAP_FIELD = {"openai": "max_completion_tokens", "anthropic": "max_tokens"}


def _namespace() -> str:
    return f"wire-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("client", list(CLIENTS))
def test_exact_cache_spares_the_wire(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str, client: str
) -> None:
    cache = ExactCache(store, namespace=_namespace(), tenant_id=tenant, ledger=ledger)
    wire.reply(text="Refunds take five days.", input_tokens=400, output_tokens=12)
    model = CLIENTS[client](wire, cache=as_langchain_cache(cache, single_tenant=True))
    first = model.invoke("How long do refunds take?")
    second = model.invoke("How long do refunds take?")
    assert second.content == first.content
    assert len(wire.requests) == 1  # the second answer never reached the provider
    ledger.flush()
    [hit] = ledger.records(tenant_id=tenant, kind="cache_hit")
    assert hit["layer"] == "exact" and hit["saved_usd"] == pytest.approx(
        expected_cost(
            model.model_name if client == "openai" else model.model,
            {"input_tokens": 400, "output_tokens": 12},
        ),  # type: ignore[attr-defined]
        abs=1e-6,
    )


@pytest.mark.parametrize("client", list(CLIENTS))
def test_exact_cache_hit_is_not_booked_as_a_call(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str, client: str
) -> None:
    cache = ExactCache(store, namespace=_namespace(), tenant_id=tenant, ledger=ledger)
    wire.reply(text="Refunds take five days.", input_tokens=400, output_tokens=12)
    model = CLIENTS[client](wire, cache=as_langchain_cache(cache))
    config = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    first = model.invoke("How long do refunds take?", config=config)
    second = model.invoke("How long do refunds take?", config=config)
    assert second.content == first.content
    assert len(wire.requests) == 1  # the second answer never reached the provider
    rows = records(ledger, tenant)
    llm = [r for r in rows if r["kind"] == "llm"]
    assert len(llm) == 1 and llm[0]["input_tokens"] == 400


def test_semantic_cache_middleware_under_create_agent(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    cache = SemanticCache(
        store, namespace=_namespace(), tenant_id=tenant, ledger=ledger, threshold=0.85
    )
    agent = create_agent(openai_chat(wire), tools=[], middleware=[SemanticCacheMiddleware(cache)])
    wire.reply(text="Use the 'Forgot password' link.", input_tokens=300, output_tokens=10)
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    agent.invoke({"messages": [HumanMessage("How do I reset my password?")]}, config)
    cache.flush()
    again = agent.invoke({"messages": [HumanMessage("how can I reset my password")]}, config)
    assert again["messages"][-1].content == "Use the 'Forgot password' link."
    assert len(wire.requests) == 1
    ledger.flush()
    hits = ledger.records(tenant_id=tenant, kind="cache_hit")
    assert len(hits) == 1 and hits[0]["layer"] == "semantic" and hits[0]["saved_usd"] > 0


@pytest.mark.parametrize("client", list(CLIENTS))
def test_budget_caps_output_in_the_request_body(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str, client: str
) -> None:
    budget = Budget(store, max_usd={"tenant": 5.0}, max_output_tokens=128)
    model = CLIENTS[client](wire)
    agent = create_agent(model, tools=[], middleware=[BudgetMiddleware(budget)])
    wire.reply(text="Capped.", input_tokens=30, output_tokens=7)
    agent.invoke(
        {"messages": [HumanMessage("Summarise my account.")]},
        {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}},
    )
    [body] = wire.bodies()
    assert body[CAP_FIELD[client]] == 128
    spent = budget.usage({"tenant_id": tenant})["tenant"]["spent_usd"]
    [row] = records(ledger, tenant)
    assert spent == pytest.approx(row["cost_usd"], abs=1e-6)


def test_budget_spends_what_the_ledger_books_with_cache_writes(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    budget = Budget(store, max_usd={"tenant": 5.0}, max_output_tokens=128)
    agent = create_agent(anthropic_chat(wire), tools=[], middleware=[BudgetMiddleware(budget)])
    reply = {"input_tokens": 6_000, "cache_write_1h": 5_000, "output_tokens": 20}
    wire.reply(**reply)
    agent.invoke(
        {"messages": [HumanMessage("Summarise my account.")]},
        {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}},
    )
    [row] = records(ledger, tenant)
    assert row["cost_usd"] == pytest.approx(expected_cost("claude-haiku-4-5", reply), abs=1e-6)
    spent = budget.usage({"tenant_id": tenant})["tenant"]["spent_usd"]
    assert spent == pytest.approx(row["cost_usd"], abs=1e-6)


def test_router_names_its_model_in_the_body(wire: WireServer, ledger: Ledger, tenant: str) -> None:
    router = Router(cheap="gpt-4o-mini", strong="gpt-4o")
    cheap, strong = openai_chat(wire, model="gpt-4o-mini"), openai_chat(wire, model="gpt-4o")
    agent = create_agent(
        cheap,
        tools=[],
        middleware=[ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)],
    )
    wire.reply(text="I'm not sure.", input_tokens=40, output_tokens=5)
    wire.reply(text="Open the app, then Card > Freeze.", input_tokens=40, output_tokens=9)
    result = agent.invoke(
        {"messages": [HumanMessage("How do I freeze my card?")]},
        {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}},
    )
    assert [b["model"] for b in wire.bodies()] == ["gpt-4o-mini", "gpt-4o"]
    assert result["messages"][-1].content.startswith("Open")
    rows = records(ledger, tenant)
    llm = {r["model"]: r for r in rows if r["kind"] == "llm"}
    assert llm["gpt-4o"]["cost_usd"] == pytest.approx(
        expected_cost("gpt-4o", {"input_tokens": 40, "output_tokens": 9}), abs=1e-6
    )


def _long_tool_history(turns: int) -> list[Any]:
    messages: list[Any] = []
    for i in range(turns):
        messages.append(HumanMessage(f"Turn {i}: look up order {1000 + i}. " + "detail " * 60))
        messages.append(
            AIMessage(
                "",
                tool_calls=[
                    {"name": "lookup_order", "args": {"order": 1000 + i}, "id": f"toolu_{i:04d}"}
                ],
            )
        )
        messages.append(
            ToolMessage(f"order {1000 + i}: shipped " + "x " * 80, tool_call_id=f"toolu_{i:04d}")
        )
        messages.append(AIMessage(f"Order {1000 + i} has shipped."))
    messages.append(HumanMessage("And the last one?"))
    return messages


def test_history_pruning_keeps_anthropic_tool_blocks_whole(
    wire: WireServer, ledger: Ledger, tenant: str
) -> None:
    from langchain_core.tools import tool

    @tool
    def lookup_order(order: int) -> str:
        """Look up an order."""
        return "shipped"

    history = _long_tool_history(12)
    agent = create_agent(
        anthropic_chat(wire),
        tools=[lookup_order],
        middleware=[HistoryPruningMiddleware(max_tokens=1_500, target_tokens=800, keep_turns=2)],
    )
    wire.reply(text="It shipped too.", input_tokens=700, output_tokens=6)
    agent.invoke(
        {"messages": history},
        {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}},
    )
    [body] = wire.bodies()
    sent = body["messages"]
    tool_uses: set[str] = set()
    tool_results: list[str] = []
    for message in sent:
        content = message["content"]
        blocks = content if isinstance(content, list) else []
        for block in blocks:
            if block.get("type") == "tool_use":
                tool_uses.add(block["id"])
            if block.get("type") == "tool_result":
                assert block["tool_use_id"] in tool_uses, "a tool_result without its tool_use"
                tool_results.append(block["tool_use_id"])
    for use in tool_uses:
        assert use in tool_results, "a tool_use without its tool_result"
    assert sent[0]["role"] == "user"  # Anthropic wants a user turn first
    assert len(sent) < len(history)  # pruned
    assert "toolu_0011" in tool_uses  # the latest pair is kept verbatim
    [row] = records(ledger, tenant)
    assert row["input_tokens"] == 700


def test_llamaindex_openai_is_booked(wire: WireServer, ledger: Ledger, tenant: str) -> None:
    import asyncio

    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai import OpenAI

    from graphthrift.llamaindex import instrument, uninstrument

    llm = OpenAI(
        model="gpt-4o-mini",
        api_base=wire.openai_url,
        api_key="sk-test",
        max_retries=0,
        # llama-index-llms-openai streams usage only when asked, as the OpenAI docs say
        additional_kwargs={"stream_options": {"include_usage": True}},
    )
    reply = {"input_tokens": 900, "cached_tokens": 512, "output_tokens": 30}
    handler = instrument(ledger, tenant_id=tenant)
    try:
        wire.reply(text="one", **reply)
        llm.chat([ChatMessage(role="user", content="hi")])
        wire.reply(text="two words", **reply)
        for _ in llm.stream_chat([ChatMessage(role="user", content="hi")]):
            pass
        wire.reply(text="three", **reply)
        asyncio.run(llm.acomplete("hi"))
    finally:
        uninstrument(handler)
    rows = records(ledger, tenant)
    assert len(rows) == 3
    for row in rows:
        assert row["model"].startswith("gpt-4o-mini")
        assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (900, 512, 30)
        assert row["cost_usd"] == pytest.approx(expected_cost("gpt-4o-mini", reply), abs=1e-6)
    assert rows[1]["streamed"]
    assert wire.bodies()[1].get("stream_options") == {"include_usage": True}


def test_llamaindex_errors_and_streams_without_usage(
    wire: WireServer, ledger: Ledger, tenant: str
) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai import OpenAI

    from graphthrift.llamaindex import instrument, uninstrument

    llm = OpenAI(model="gpt-4o-mini", api_base=wire.openai_url, api_key="sk-test", max_retries=0)
    handler = instrument(ledger, tenant_id=tenant)
    try:
        wire.reply(text="streamed with no usage block")
        for _ in llm.stream_chat([ChatMessage(role="user", content="hi")]):
            pass
        wire.reply(status=429, retry_after="3")
        with pytest.raises(Exception) as info:
            llm.chat([ChatMessage(role="user", content="hi")])
        assert getattr(info.value, "status_code", None) == 429
    finally:
        uninstrument(handler)
    streamed, failed = records(ledger, tenant)
    assert "stream_options" not in wire.bodies()[0]
    assert streamed["usage_source"] == "estimated" and streamed["output_tokens"] > 0
    assert not failed["success"] and failed["error_type"] == "rate_limit"
