"""When a fold pays: the cost of carrying the unfolded history against the cost of a fold.

A fold shortens every later prompt, but it rewrites the head of the next one, so the
provider's prompt cache misses once (Anthropic bills the rewrite at its cache-write rate),
and an LLM summarizer's call is paid at list. Carrying the history instead costs the folded
part's tokens on every coming turn, at the cached-read rate once the prompt is cacheable.
``fold_pays`` weighs the two; the pruner folds early only when it says so (a fold the hard
budget forces is always taken). The rule is written out in ``docs/history.md``.

Example:
    >>> pricing = CachePricing.for_model("openai:gpt-4o")
    >>> fold_pays(pricing, prompt_tokens=6000, folded_prompt_tokens=3000, horizon_turns=10)
    True
    >>> fold_pays(pricing, prompt_tokens=6000, folded_prompt_tokens=3000, horizon_turns=0)
    False
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from graphthrift.errors import ConfigError
from graphthrift.history.pricing import DEFAULT_PRICE_MODELS, PromptCacheRules, cache_rules_for
from graphthrift.ledger.prices import PriceBook, default_price_book

__all__ = ["DEFAULT_FOLD_PRICE_MODEL", "CachePricing", "fold_pays"]

#: The price model a pruner weighs folds at when its ``model`` has no known price: the
#: Anthropic one (0.1x cached reads, 1.25x writes), where an early fold pays least, so the
#: default folds early only in long threads.
DEFAULT_FOLD_PRICE_MODEL = DEFAULT_PRICE_MODELS[0]
# Rates are read off the cost of this many tokens: well under the long-context tiers
# (Anthropic bills prompts over 200k tokens at a higher rate).
_REF = 10_000


@dataclass(frozen=True, slots=True)
class CachePricing:
    """USD per token of a model's input at list, read from and written to its prompt cache.

    Attributes:
        input_usd: one uncached input token.
        cached_read_usd: one input token read from the prompt cache.
        cache_write_usd: one input token written to the cache (``input_usd`` when the
            provider writes without a surcharge).
        output_usd: one output token (a summarizer's answer).
        min_cacheable_tokens: a shorter prompt is neither cached nor read from the cache.
    """

    input_usd: float
    cached_read_usd: float
    cache_write_usd: float
    output_usd: float
    min_cacheable_tokens: int = 1024

    def __post_init__(self) -> None:
        for name in ("input_usd", "cached_read_usd", "cache_write_usd", "output_usd"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(name, value, "must be a finite price >= 0 USD per token")
        if self.min_cacheable_tokens < 0:
            raise ConfigError(
                "min_cacheable_tokens", self.min_cacheable_tokens, "must be >= 0 tokens"
            )

    @classmethod
    def for_model(
        cls,
        price_model: str,
        *,
        book: PriceBook | None = None,
        rules: PromptCacheRules | None = None,
    ) -> CachePricing:
        """The rates of ``price_model`` from genai-prices (through the ledger's ``PriceBook``)."""
        book = book or default_price_book()
        if not book.is_known(price_model):
            raise ConfigError("price_model", price_model, "genai-prices has no price for it")
        rules = rules or cache_rules_for(price_model, book)

        def rate(inp: int, out: int, cached: int, written: int) -> float:
            cost = book.cost(price_model, inp, out, cached, cache_write_tokens=written)
            return (cost or 0.0) / _REF

        written = rate(_REF, 0, 0, _REF) if rules.writes_cached else rate(_REF, 0, 0, 0)
        return cls(
            input_usd=rate(_REF, 0, 0, 0),
            cached_read_usd=rate(_REF, 0, _REF, 0),
            cache_write_usd=written,
            output_usd=rate(0, _REF, 0, 0),
            min_cacheable_tokens=rules.min_cacheable_tokens,
        )

    def steady_usd(self, prompt_tokens: int) -> float:
        """What a prompt of this size costs on a turn that only extends the previous one
        (the new tokens aside): cached reads once cacheable, list below the minimum."""
        rate = (
            self.cached_read_usd if prompt_tokens >= self.min_cacheable_tokens else self.input_usd
        )
        return prompt_tokens * rate

    def rewrite_usd(self, prompt_tokens: int) -> float:
        """What a prompt costs on the turn its head changed: written to the cache, or list."""
        rate = (
            self.cache_write_usd if prompt_tokens >= self.min_cacheable_tokens else self.input_usd
        )
        return prompt_tokens * rate


def fold_pays(
    pricing: CachePricing,
    *,
    prompt_tokens: int,
    folded_prompt_tokens: int,
    horizon_turns: float,
    summary_input_tokens: int = 0,
    summary_output_tokens: int = 0,
) -> bool:
    """Whether folding now costs less than carrying the history over ``horizon_turns``.

    Carrying: this turn and each coming one read the prompt at its steady cost. Folding:
    this turn writes the shorter prompt anew (the cache misses once), the summarizer call
    is paid at list, and each coming turn reads the shorter prompt at its steady cost.
    """
    keep = pricing.steady_usd(prompt_tokens) * (1 + horizon_turns)
    fold = (
        pricing.rewrite_usd(folded_prompt_tokens)
        + pricing.steady_usd(folded_prompt_tokens) * horizon_turns
        + summary_input_tokens * pricing.input_usd
        + summary_output_tokens * pricing.output_usd
    )
    return fold < keep
