"""Prices come from genai-prices; unknown models cost None with a counted warning."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price

from graphthrift import diagnostics
from graphthrift.prices import PriceBook, split_model_ref


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-mini",
        "gpt-4o",
        "claude-3-5-sonnet-latest",
        "gemini-2.0-flash",
        "o3-mini",
        "gemini-2.5-pro",
    ],
)
def test_cost_matches_genai_prices_including_cached_input(model: str) -> None:
    book = PriceBook()
    expected = float(
        calc_price(
            Usage(input_tokens=12_000, output_tokens=700, cache_read_tokens=4_000), model
        ).total_price
    )
    assert book.cost(model, 12_000, 700, 4_000) == pytest.approx(expected, rel=1e-9)


def test_cached_tokens_are_cheaper() -> None:
    book = PriceBook()
    assert book.cost("gpt-4o-mini", 10_000, 0, 8_000) < book.cost("gpt-4o-mini", 10_000, 0, 0)  # type: ignore[operator]


def test_provider_prefixes_are_understood() -> None:
    assert split_model_ref("openai:gpt-4o") == ("openai", "gpt-4o")
    assert split_model_ref("anthropic/claude-3-5-haiku-latest") == (
        "anthropic",
        "claude-3-5-haiku-latest",
    )
    assert split_model_ref("my-model:v2") == (None, "my-model:v2")
    book = PriceBook()
    assert book.cost("openai:gpt-4o", 1000, 100) == book.cost("gpt-4o", 1000, 100)


def test_unknown_model_costs_none_and_counts_a_warning() -> None:
    book = PriceBook()
    before = diagnostics.get("unknown_model_price")
    assert book.cost("totally-unknown-model-xyz", 1000, 100) is None
    assert book.cost("totally-unknown-model-xyz", 1000, 100) is None
    assert diagnostics.get("unknown_model_price") == before + 2
    assert not book.is_known("totally-unknown-model-xyz")


def test_override_and_add_prices() -> None:
    book = PriceBook()
    book.set_price(
        "my-finetune", input_per_mtok=1.0, output_per_mtok=4.0, cached_input_per_mtok=0.5
    )
    assert book.cost("my-finetune", 1_000_000, 0) == pytest.approx(1.0)
    assert book.cost("my-finetune", 1_000_000, 1_000_000, 1_000_000) == pytest.approx(4.5)
    original = book.cost("gpt-4o-mini", 1_000_000, 0)
    book.set_price("gpt-4o-mini", input_per_mtok=9.0, output_per_mtok=9.0)
    assert book.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(9.0) != original


@pytest.mark.parametrize("bad", [-1.0, "cheap", float("nan") * 0 - 1])
def test_bad_override_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="input_per_mtok"):
        PriceBook().set_price("m", input_per_mtok=bad, output_per_mtok=1.0)  # type: ignore[arg-type]
