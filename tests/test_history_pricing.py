"""Effective cost: a policy's prompts priced turn by turn as the provider bills them."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price

from graphthrift.errors import ConfigError
from graphthrift.history.pricing import (
    DEFAULT_PRICE_MODELS,
    PromptCacheRules,
    PromptTurn,
    SummarizerCall,
    effective_cost_usd,
    effective_costs,
    effective_saved_fraction,
    effective_saved_fractions,
    price_turns,
    turns_from_messages,
)
from graphthrift.ledger.prices import PriceBook, split_model_ref

ANTHROPIC, OPENAI = DEFAULT_PRICE_MODELS


def _genai(model: str, prompt: int, output: int, cached: int, written: int) -> float:
    provider, ref = split_model_ref(model)
    usage = Usage(
        input_tokens=prompt,
        output_tokens=output,
        cache_read_tokens=cached,
        cache_write_tokens=written,
    )
    return float(calc_price(usage, ref, provider_id=provider).total_price)


# a growing conversation, a fold (head rewritten), a short prompt and a pause past the TTL
TURNS = [
    PromptTurn(1500, 0, 40),
    PromptTurn(2300, 1480, 60),
    PromptTurn(3100, 2290, 80),
    PromptTurn(1800, 300, 50, (SummarizerCall(2800, 200),)),
    PromptTurn(2600, 1790, 70),
    PromptTurn(900, 600, 30),
    PromptTurn(3000, 900, 30),
    PromptTurn(3500, 2990, 90, seconds_since_previous=400.0),
    PromptTurn(4000, 3590, 90),
]


@pytest.mark.parametrize("model", DEFAULT_PRICE_MODELS)
def test_each_turn_costs_what_genai_prices_bills_for_its_usage(model: str) -> None:
    priced = price_turns(TURNS, model)
    assert len(priced) == len(TURNS)
    for turn, price in zip(TURNS, priced, strict=True):
        assert price.cached_tokens + price.cache_write_tokens <= turn.prompt_tokens
        expected = _genai(
            model,
            turn.prompt_tokens,
            turn.output_tokens,
            price.cached_tokens,
            price.cache_write_tokens,
        )
        assert price.prompt_cost_usd == pytest.approx(expected, rel=1e-9)
        summary = sum(
            _genai(model, c.input_tokens, c.output_tokens, 0, 0) for c in turn.summarizer_calls
        )
        assert price.summarizer_cost_usd == pytest.approx(summary, rel=1e-9)
    assert effective_cost_usd(TURNS, model) == pytest.approx(sum(p.cost_usd for p in priced))


def test_anthropic_reads_the_shared_head_and_writes_the_rest() -> None:
    priced = price_turns(TURNS, ANTHROPIC)
    split = [(p.cached_tokens, p.cache_write_tokens) for p in priced]
    assert split[0] == (0, 1500)  # first prompt: all written
    assert split[1] == (1480, 820)  # shared head read, the new tail written
    assert split[2] == (2290, 810)
    assert split[3] == (0, 1800)  # the fold kept 300 tokens: under the 1,024 minimum
    assert split[4] == (1790, 810)
    assert split[5] == (0, 0)  # 900 tokens: too short to be cached at all
    assert split[6] == (0, 3000)  # previous prompt was not cached: nothing to read
    assert split[7] == (0, 3500)  # 400 s since the previous prompt: past the 5-minute TTL
    assert split[8] == (3500, 500)  # the head shared (3590) is longer than what was cached
    # writes cost more than list on Anthropic: the first turn costs more than list
    book = PriceBook()
    listed = book.cost(ANTHROPIC, 1500, 40)
    assert listed is not None and priced[0].prompt_cost_usd > listed


def test_openai_reads_in_128_token_steps_and_charges_no_write() -> None:
    priced = price_turns(TURNS, OPENAI)
    assert [p.cache_write_tokens for p in priced] == [0] * len(TURNS)
    assert priced[1].cached_tokens == 1408  # 1480 rounded down to 128s
    assert priced[2].cached_tokens == 2176
    assert priced[4].cached_tokens == 1664
    assert priced[7].cached_tokens == 0  # TTL
    assert priced[8].cached_tokens == 3456  # capped at the 3,500 cached, in 128s
    book = PriceBook()
    listed = book.cost(OPENAI, 1500, 40)
    assert priced[0].prompt_cost_usd == pytest.approx(listed)


def test_cached_reads_make_full_history_cheaper_than_its_tokens_say() -> None:
    growing = [PromptTurn(2000 + 500 * k, 2000 + 500 * k - 500 if k else 0, 50) for k in range(20)]
    book = PriceBook()
    list_cost = sum(book.cost(OPENAI, t.prompt_tokens, t.output_tokens) or 0 for t in growing)
    cached_cost = effective_cost_usd(growing, OPENAI)
    assert cached_cost < 0.7 * list_cost


def test_saved_fraction() -> None:
    assert effective_saved_fraction(0.25, 1.0) == pytest.approx(0.75)
    assert effective_saved_fraction(1.5, 1.0) == pytest.approx(-0.5)
    with pytest.raises(ConfigError, match="full_cost"):
        effective_saved_fraction(1.0, 0.0)
    with pytest.raises(ConfigError, match="policy_cost"):
        effective_saved_fraction(float("nan"), 1.0)


def test_bad_turns_and_unknown_models_are_named() -> None:
    with pytest.raises(ConfigError, match="shared_prefix_tokens"):
        PromptTurn(100, 200)
    with pytest.raises(ConfigError, match="prompt_tokens"):
        PromptTurn(-1)
    with pytest.raises(ConfigError, match="price_model"):
        price_turns([PromptTurn(10)], "openai:no-such-model-xyz")
    with pytest.raises(ConfigError, match="prompt-cache rules"):
        price_turns([PromptTurn(10)], "mistral:mistral-large-latest")
    with pytest.raises(ConfigError, match="increment_tokens"):
        PromptCacheRules(1024, 0)


def test_overridden_rules_apply() -> None:
    rules = PromptCacheRules(min_cacheable_tokens=0, increment_tokens=1, writes_cached=False)
    priced = price_turns([PromptTurn(100, 0), PromptTurn(150, 100)], OPENAI, rules=rules)
    assert [p.cached_tokens for p in priced] == [0, 100]


def test_turns_from_messages_counts_the_shared_head() -> None:
    system = {"role": "system", "content": "You are a helpful travel agent. " * 80}
    first = [system, {"role": "user", "content": "Book a table for two at 7pm."}]
    second = [
        *first,
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks"},
    ]
    folded = [system, {"role": "user", "content": "Summary: table booked."}, second[-1]]
    turns = turns_from_messages([first, second, folded], output_tokens=[5, 5, 5], model="gpt-4o")
    assert turns[0].shared_prefix_tokens == 0
    # the whole first prompt minus its reply priming is the head of the second
    assert turns[1].shared_prefix_tokens == turns[0].prompt_tokens - 3
    assert turns[1].prompt_tokens > turns[0].prompt_tokens
    # after the fold only the system message is shared
    assert 0 < turns[2].shared_prefix_tokens < turns[0].prompt_tokens - 3
    with pytest.raises(ConfigError, match="output_tokens"):
        turns_from_messages([first], output_tokens=[1, 2])


def test_costs_per_price_model_as_the_bench_reports_them() -> None:
    full = [PromptTurn(2000 + 500 * k, 2000 + 500 * k - 500 if k else 0, 50) for k in range(12)]
    # a policy that folds every fourth turn down to 1,200 tokens, with a summarizer call
    policy = [
        PromptTurn(1200, 0, 50, (SummarizerCall(3000, 150),))
        if k % 4 == 3
        else PromptTurn(1200 + 500 * (k % 4), 1200 + 500 * (k % 4) - 500 if k % 4 else 0, 50)
        for k in range(12)
    ]
    full_costs = effective_costs(full)
    policy_costs = effective_costs(policy)
    assert set(full_costs) == set(policy_costs) == set(DEFAULT_PRICE_MODELS)
    for model in DEFAULT_PRICE_MODELS:
        assert full_costs[model] == pytest.approx(effective_cost_usd(full, model))
    saved = effective_saved_fractions(policy_costs, full_costs)
    for model in DEFAULT_PRICE_MODELS:
        assert saved[model] == pytest.approx(1 - policy_costs[model] / full_costs[model])
        assert saved[model] < 1
    with pytest.raises(ConfigError, match="same price models"):
        effective_saved_fractions({OPENAI: 1.0}, full_costs)
