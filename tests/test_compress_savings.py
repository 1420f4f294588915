"""Compression savings priced at the model actually called, and booked once (issue 11, item 8).

A RAG graph (retrieve -> compress -> prompt -> budget guard -> router -> settle) runs once
without compression (the baseline) and once with it. The invariant: the compression saving
the ledger books equals the baseline's spend minus the compressed run's spend. When a cache
answers instead of a model, the held compression saving is dropped.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph

from graphthrift import CostTagger, diagnostics
from graphthrift.budget import Budget
from graphthrift.compress import ExtractiveCompressor
from graphthrift.langgraph import BudgetState, CompressState, RouteState
from graphthrift.langgraph.budget import enforce_budget, route_on_budget
from graphthrift.langgraph.compress import compress_context
from graphthrift.langgraph.route import choose_model
from graphthrift.route import Router
from graphthrift.text import count_text

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
QUESTION = "When did the Golden Gate Bridge open?"
DOCS = [
    "Bananas are yellow when ripe. They grow in bunches on large plants in the tropics.",
    "The Golden Gate Bridge opened on May 27, 1937. It is painted International Orange. "
    "It is 2.7 km long and spans the strait at the entrance to San Francisco Bay.",
    "Cars need regular oil changes. Tyres should be checked monthly for pressure and wear.",
]


class CountingFake(BaseChatModel):
    """Reports the input tokens of what it is sent, message by message (additive)."""

    model_name: str = CHEAP

    @property
    def _llm_type(self) -> str:
        return "counting-fake"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = self.model_name
        return params

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        inp = sum(count_text(str(m.content), self.model_name) for m in messages)
        usage = {"input_tokens": inp, "output_tokens": 7, "total_tokens": inp + 7}
        answer = AIMessage(
            "It opened on May 27, 1937.",
            usage_metadata=usage,  # type: ignore[arg-type]
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=answer)])


class RagState(CompressState, BudgetState, RouteState):
    """Retrieval, compression, budget and routing keys, declared."""


def _graph(ledger: Any, budget: Budget, *, compress: bool, cached: bool = False) -> Any:
    router = Router(CHEAP, STRONG, ledger=ledger)
    models = {CHEAP: CountingFake(model_name=CHEAP), STRONG: CountingFake(model_name=STRONG)}
    guard = enforce_budget(budget, model=STRONG)
    builder = StateGraph(RagState)
    builder.add_node("retrieve", lambda s: {"documents": DOCS})
    compressor = ExtractiveCompressor(target_ratio=0.4, embedder=False, model=STRONG)
    builder.add_node("compress", compress_context(compressor, ledger=ledger, defer_saving=True))

    def prompt(state: Any) -> dict[str, Any]:
        return {"messages": [SystemMessage(d) for d in state["documents"]]}

    builder.add_node("prompt", prompt)
    builder.add_node("guard", guard.guard)
    hit = AIMessage("cached answer", response_metadata={"graphthrift_cache": {"kind": "exact"}})
    answer: Any = (lambda s: {"messages": [hit]}) if cached else choose_model(router, models=models)
    builder.add_node("answer", answer)
    builder.add_node("settle", guard.settle)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "compress" if compress else "prompt")
    builder.add_edge("compress", "prompt")
    builder.add_edge("prompt", "guard")
    builder.add_conditional_edges("guard", route_on_budget("answer"))
    builder.add_edge("answer", "settle")
    builder.add_edge("settle", END)
    return builder.compile()


def _run(ledger: Any, tenant: str, **kwargs: Any) -> dict[str, float]:
    budget = Budget(ledger.store, max_usd={"tenant": 1.0}, max_output_tokens=64)
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}}
    _graph(ledger, budget, **kwargs).invoke(
        {"messages": [HumanMessage(QUESTION)], "question": QUESTION}, config
    )
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    return {
        "spend": sum(r["cost_usd"] or 0.0 for r in rows if r["kind"] == "llm"),
        "saved": sum(r["saved_usd"] or 0.0 for r in rows if r["kind"] == "compression"),
        "compression_rows": sum(r["kind"] == "compression" for r in rows),
        "budget": budget.usage({"tenant_id": tenant})["tenant"]["spent_usd"],
        "models": sorted({r["model"] for r in rows if r["kind"] == "compression"}),
    }


def test_savings_add_up_to_baseline_minus_spend(ledger: Any, tenant: str) -> None:
    baseline = _run(ledger, f"{tenant}-base", compress=False)
    run = _run(ledger, f"{tenant}-comp", compress=True)
    assert run["compression_rows"] == 1 and run["saved"] > 0
    assert run["models"] == [CHEAP]  # priced at the model that was called, not the fixed one
    assert run["saved"] == pytest.approx(baseline["spend"] - run["spend"], rel=1e-9)
    assert run["budget"] == pytest.approx(run["spend"])  # the budget books what the ledger books
    assert baseline["budget"] == pytest.approx(baseline["spend"])


def test_cache_hit_after_compression_books_no_compression_saving(ledger: Any, tenant: str) -> None:
    before = diagnostics.get("compression_saving_superseded")
    run = _run(ledger, tenant, compress=True, cached=True)
    assert run["compression_rows"] == 0 and run["spend"] == 0.0
    assert diagnostics.get("compression_saving_superseded") == before + 1
    assert run["budget"] == 0.0  # the reservation was released, not settled


def test_held_saving_without_a_booking_node_is_flushed(ledger: Any, tenant: str) -> None:
    from graphthrift.compress import flush_savings

    compressor = ExtractiveCompressor(target_ratio=0.4, embedder=False, model=CHEAP)
    builder = StateGraph(CompressState)
    builder.add_node("compress", compress_context(compressor, ledger=ledger, defer_saving=True))
    builder.add_edge(START, "compress")
    out = builder.compile().invoke(
        {"question": QUESTION, "documents": DOCS}, {"metadata": {"tenant_id": tenant}}
    )
    assert len(out["compression_pending"]) == 1
    assert flush_savings() >= 1
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="compression")
    assert len(rows) == 1 and rows[0]["model"] == CHEAP and rows[0]["saved_usd"] > 0
