"""The simulated provider: tiktoken usage, provider-like prompt cache, determinism, env config."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from graphthrift import CostTagger, Ledger
from graphthrift.langchain.sim import SimulatedChatModel, chat_model_from_env
from graphthrift.ledger import cost_usd
from graphthrift.sim import (
    CACHE_INCREMENT,
    HEDGE,
    Expected,
    Oracle,
    PromptCache,
    SimulatedProvider,
    ToolCallRequest,
)
from graphthrift.text import count_messages, count_text

LONG = "Policy line about refunds and cards, repeated for length. " * 200


def _model(name: str = "gpt-4o", **oracle_items: str) -> SimulatedChatModel:
    oracle = Oracle()
    oracle.add("What is 2 + 2?", "It is 4.")
    return SimulatedChatModel(model_name=name, provider=SimulatedProvider(oracle))


def test_usage_equals_tiktoken_counts() -> None:
    model = _model()
    prompt = [SystemMessage("Be brief."), HumanMessage("What is 2 + 2?")]
    reply = model.invoke(prompt)
    assert reply.content == "It is 4."
    usage: Any = reply.usage_metadata
    assert usage["input_tokens"] == count_messages(prompt, "gpt-4o").tokens
    assert usage["output_tokens"] == count_text("It is 4.", "gpt-4o")
    assert usage["input_token_details"]["cache_read"] == 0
    assert reply.response_metadata["model_name"] == "gpt-4o"
    assert reply.response_metadata["latency_ms"] > 0


def test_repeated_long_prefix_is_cached_in_128_token_steps() -> None:
    model = _model()
    first = model.invoke([SystemMessage(LONG), HumanMessage("What is 2 + 2?")])
    second = model.invoke([SystemMessage(LONG), HumanMessage("Something else entirely?")])
    assert first.usage_metadata["input_token_details"]["cache_read"] == 0  # type: ignore[index]
    cached = second.usage_metadata["input_token_details"]["cache_read"]  # type: ignore[index]
    assert cached >= 1024 and cached % CACHE_INCREMENT == 0
    assert cached <= second.usage_metadata["input_tokens"]  # type: ignore[index]
    # short prompts are never cached; other models have their own cache
    assert model.invoke("What is 2 + 2?").usage_metadata["input_token_details"]["cache_read"] == 0  # type: ignore[index]
    other = model.model_copy(update={"model_name": "gpt-4o-mini"})
    assert (
        other.invoke([SystemMessage(LONG), HumanMessage("x?")]).usage_metadata[  # type: ignore[index]
            "input_token_details"
        ]["cache_read"]
        == 0
    )


def test_prompt_cache_ttl_and_lru() -> None:
    now = [0.0]
    cache = PromptCache(max_entries=1, ttl=10.0, clock=lambda: now[0])
    tokens = list(range(2000))
    assert cache.cached_tokens("m", tokens) == 0
    assert cache.cached_tokens("m", tokens) == 1920
    now[0] = 100.0
    assert cache.cached_tokens("m", tokens) == 0  # expired
    cache.cached_tokens("m", list(range(5000, 7000)))  # evicts the first (max_entries=1)
    assert cache.cached_tokens("m", tokens) == 0


def test_cached_tokens_priced_at_cached_price_via_ledger(ledger: Ledger, tenant: str) -> None:
    model = _model()
    tagger = CostTagger(ledger)
    config: Any = {"callbacks": [tagger], "metadata": {"tenant_id": tenant}}
    model.invoke([SystemMessage(LONG), HumanMessage("What is 2 + 2?")], config)
    reply = model.invoke([SystemMessage(LONG), HumanMessage("What is 2 + 2?")], config)
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="llm")
    assert len(rows) == 2
    usage: Any = reply.usage_metadata
    cached = usage["input_token_details"]["cache_read"]
    assert rows[1]["cached_tokens"] == cached > 0
    expected = cost_usd("gpt-4o", usage["input_tokens"], usage["output_tokens"], cached)
    assert rows[1]["cost_usd"] == pytest.approx(expected)
    assert rows[1]["cost_usd"] < rows[0]["cost_usd"]


def test_deterministic_and_hard_items_fail_on_cheap_model_sometimes() -> None:
    oracle = Oracle()
    for i in range(60):
        oracle.add(f"hard question {i}?", Expected(f"answer {i}", hard=True, item_id=str(i)))
    provider = SimulatedProvider(oracle, tiers={"gpt-4o-mini": "cheap"})
    runs = [
        [
            provider.complete(
                "gpt-4o-mini", [{"role": "user", "content": f"hard question {i}?"}]
            ).text
            for i in range(60)
        ]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    right = sum(t == f"answer {i}" for i, t in enumerate(runs[0]))
    assert 5 < right < 40
    assert any(t == HEDGE for t in runs[0])


def test_evidence_missing_from_prompt_means_a_hedge() -> None:
    oracle = Oracle()
    oracle.add("When was it built?", Expected("1932", evidence=(("1932",),)))
    provider = SimulatedProvider(oracle)
    ask = [{"role": "user", "content": "When was it built?"}]
    assert provider.complete("gpt-4o", ask).text == HEDGE
    ctx = [{"role": "system", "content": "The bridge was built in 1932."}, *ask]
    assert provider.complete("gpt-4o", ctx).text == "1932"


def test_streaming_usage_on_last_chunk_and_tool_calls() -> None:
    oracle = Oracle()
    oracle.add("Find it", Expected("Found.", tool_plan=(ToolCallRequest("lookup", {"q": "x"}),)))
    model = SimulatedChatModel(provider=SimulatedProvider(oracle))
    chunks = list(model.stream("What is 2 + 2?"))
    assert chunks[-1].usage_metadata is not None
    assert all(c.usage_metadata is None for c in chunks[:-1])

    def lookup(q: str) -> str:
        """Look something up."""
        return "result"

    bound = model.bind_tools([lookup])
    reply: Any = bound.invoke("Find it")
    assert reply.tool_calls[0]["name"] == "lookup"


def test_chat_model_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = chat_model_from_env("cheap", environ={})
    assert isinstance(sim, SimulatedChatModel) and sim.model_name == "gpt-4o-mini"
    assert chat_model_from_env("strong", environ={}).model_name == "gpt-4o"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        chat_model_from_env("medium", environ={})
    pytest.importorskip("langchain_openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    real = chat_model_from_env("strong", environ={"GRAPHTHRIFT_STRONG_MODEL": "openai:gpt-4o"})
    assert not isinstance(real, SimulatedChatModel)
