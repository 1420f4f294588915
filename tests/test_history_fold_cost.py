"""Fold only when it pays: the cost rule, and the pruner folding early by it, never over budget."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

from graphthrift import diagnostics
from graphthrift.errors import ConfigError, HistoryConfigError
from graphthrift.history import fold_cost
from graphthrift.history.fold_cost import CachePricing, fold_pays
from graphthrift.history.pricing import PromptTurn, effective_cost_usd, turns_from_messages
from graphthrift.history.pruner import HistoryPruner
from graphthrift.ledger.prices import default_price_book


def _thread(turns: int, words: int = 60) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for t in range(turns):
        filler = " ".join(f"w{t}x{k}" for k in range(words))
        out.append({"role": "user", "content": f"Turn {t}: {filler}", "id": f"u{t}"})
        out.append({"role": "assistant", "content": f"Reply {t}: {filler}", "id": f"a{t}"})
    return out


def _run(pruner: HistoryPruner, turns: int) -> tuple[list[list[Any]], list[int], int]:
    """Replay a thread turn by turn: the prompts, their sizes, and the number of folds."""
    history: list[dict[str, str]] = []
    state = None
    prompts: list[list[Any]] = []
    sizes: list[int] = []
    folds = 0
    for message in _thread(turns):
        history.append(message)
        if message["role"] != "user":
            continue
        result = pruner.prune(history, state)
        state = result.state
        prompts.append([{"role": m.role, "content": m.text} for m in result.messages])
        sizes.append(result.tokens_out)
        folds += bool(result.folded)
    return prompts, sizes, folds


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(fold_cost).failed == 0


def test_rates_come_from_the_price_book() -> None:
    book = default_price_book()
    pricing = CachePricing.for_model("anthropic:claude-sonnet-4-5")
    n = 50_000  # a prompt of 50k tokens, as the pruner prices one (not a long-context tier)
    assert pricing.input_usd * n == pytest.approx(book.cost("anthropic:claude-sonnet-4-5", n, 0))
    assert pricing.output_usd * n == pytest.approx(book.cost("anthropic:claude-sonnet-4-5", 0, n))
    assert pricing.cached_read_usd < pricing.input_usd < pricing.cache_write_usd
    openai = CachePricing.for_model("openai:gpt-4o")
    assert openai.cache_write_usd == pytest.approx(openai.input_usd)  # no write surcharge
    assert openai.cached_read_usd == pytest.approx(openai.input_usd / 2)
    with pytest.raises(ConfigError, match="price_model"):
        CachePricing.for_model("nobody:no-such-model")


def test_a_cheap_cache_needs_a_longer_horizon_before_a_fold_pays() -> None:
    anthropic = CachePricing.for_model("anthropic:claude-sonnet-4-5")
    openai = CachePricing.for_model("openai:gpt-4o")
    args: dict[str, int] = {"prompt_tokens": 6000, "folded_prompt_tokens": 3000}
    assert fold_pays(openai, horizon_turns=2, **args)
    assert not fold_pays(anthropic, horizon_turns=2, **args)
    assert fold_pays(anthropic, horizon_turns=40, **args)
    # an LLM summarizer's call at list price can tip it back
    assert not fold_pays(
        openai, horizon_turns=2, summary_input_tokens=3000, summary_output_tokens=2000, **args
    )


def test_cost_policy_folds_early_where_it_pays_and_costs_less() -> None:
    settings: dict[str, Any] = {"max_tokens": 6000, "target_tokens": 1500, "keep_turns": 1}
    by_cost = HistoryPruner(price_model="openai:gpt-4o", **settings)
    by_budget = HistoryPruner(fold_policy="budget", **settings)
    cost_prompts, cost_sizes, cost_folds = _run(by_cost, 40)
    budget_prompts, budget_sizes, _ = _run(by_budget, 40)
    assert max(cost_sizes) <= 6000 and max(budget_sizes) <= 6000
    assert cost_folds > 0
    # folding earlier than the budget demands: some cost-policy prompt is smaller
    assert any(c < b for c, b in zip(cost_sizes, budget_sizes, strict=True))
    price = "openai:gpt-4o"
    cost = effective_cost_usd(turns_from_messages(cost_prompts), price)
    budget = effective_cost_usd(turns_from_messages(budget_prompts), price)
    assert cost < budget


def test_short_threads_are_left_alone() -> None:
    pruner = HistoryPruner(price_model="openai:gpt-4o", max_tokens=8192)
    _, sizes, folds = _run(pruner, 6)
    assert folds == 0 and sizes == sorted(sizes)


def test_a_fold_the_budget_forces_is_taken_even_when_it_never_pays() -> None:
    free_cache = CachePricing(1e-6, 0.0, 1e-3, 1e-6, min_cacheable_tokens=0)
    assert not fold_pays(free_cache, prompt_tokens=900, folded_prompt_tokens=300, horizon_turns=5)
    pruner = HistoryPruner(cache_pricing=free_cache, max_tokens=900, target_tokens=450)
    _, sizes, folds = _run(pruner, 20)
    assert folds > 0 and max(sizes) <= 900


def test_bad_fold_settings_raise() -> None:
    with pytest.raises(HistoryConfigError, match="fold_policy"):
        HistoryPruner(fold_policy="never")  # type: ignore[arg-type]
    with pytest.raises(HistoryConfigError, match="price_model"):
        HistoryPruner(price_model="nobody:no-such-model")
    with pytest.raises(ConfigError, match="cache_pricing"):
        HistoryPruner(
            price_model="openai:gpt-4o", cache_pricing=CachePricing.for_model("openai:gpt-4o")
        )
    with pytest.raises(HistoryConfigError, match="horizon_turns"):
        HistoryPruner(horizon_turns=0)


def test_counter_counts_paid_folds() -> None:
    before = diagnostics.get("history_fold_paid")
    _run(HistoryPruner(price_model="openai:gpt-4o", max_tokens=6000, target_tokens=1500), 40)
    assert diagnostics.get("history_fold_paid") > before
    assert PromptTurn(10).prompt_tokens == 10
