"""``wrap_model`` around the real ``ChatOpenAI``, over OpenAI's wire format on a local server.

What the provider receives (once per distinct question, with the budget's output cap and
the bound tools), what the ledger and the budget book (the usage the server reported, at
genai-prices' price), and that a hit streams the cached answer without a request.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from test_cost_tagger_wire import expected_cost, openai_chat
from wire_server import WireServer

from graphthrift import Budget, ExactCache, Ledger, Store, wrap_model

MODEL = "gpt-4o-mini"


def _wrapped(wire: WireServer, store: Store, ledger: Ledger, budget: Budget) -> Any:
    cache = ExactCache(store, namespace=f"wire-wrap-{uuid.uuid4().hex[:8]}", ledger=ledger)
    return wrap_model(openai_chat(wire, model=MODEL), cache=cache, budget=budget, ledger=ledger)


def test_wrapped_chat_openai_caches_caps_and_books(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=64)
    model = _wrapped(wire, store, ledger, budget)
    config: Any = {"metadata": {"tenant_id": tenant, "feature": "faq"}}
    reply = {"input_tokens": 900, "output_tokens": 30}
    wire.reply(text="Refunds take five days.", **reply)
    first = model.invoke([HumanMessage("How long do refunds take?")], config)
    assert first.content == "Refunds take five days."
    [body] = wire.bodies("/v1/chat/completions")
    assert body["model"] == MODEL and body["max_completion_tokens"] == 64  # the reservation
    streamed = "".join(
        str(c.content) for c in model.stream([HumanMessage("How long do refunds take?")], config)
    )
    assert streamed == first.content
    assert len(wire.requests) == 1  # the hit never reached the provider
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    [llm] = [r for r in rows if r["kind"] == "llm"]
    assert llm["model"] == MODEL and llm["feature"] == "faq"
    assert llm["cost_usd"] == pytest.approx(expected_cost(MODEL, reply), abs=1e-9)
    assert len([r for r in rows if r["kind"] == "cache_hit"]) == 1
    spent = budget.usage({"tenant_id": tenant})["tenant"]
    assert spent["spent_usd"] == pytest.approx(expected_cost(MODEL, reply), abs=1e-9)
    assert spent["reserved_usd"] == 0


def test_wrapped_chat_openai_streams_a_miss_and_binds_tools(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    @tool
    def lookup_order(order_id: str) -> str:
        """The status of one of the customer's orders."""
        return "shipped"

    budget = Budget(store, max_tokens={"tenant": 100_000}, max_output_tokens=128)
    model = _wrapped(wire, store, ledger, budget)
    config: Any = {"metadata": {"tenant_id": tenant}}
    wire.reply(text="We open at nine.", input_tokens=200, output_tokens=6)
    chunks = list(model.stream([HumanMessage("When do you open?")], config))
    assert "".join(str(c.content) for c in chunks) == "We open at nine."
    wire.reply(text="", tool_call=("lookup_order", {"order_id": "A-1"}))
    called = model.bind_tools([lookup_order]).invoke([HumanMessage("Where is A-1?")], config)
    assert called.tool_calls[0]["name"] == "lookup_order"
    assert called.tool_calls[0]["args"] == {"order_id": "A-1"}
    bodies = wire.bodies("/v1/chat/completions")
    assert len(bodies) == 2 and bodies[0]["max_completion_tokens"] == 128
    assert [t["function"]["name"] for t in bodies[1]["tools"]] == ["lookup_order"]
