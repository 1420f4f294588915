"""What a history policy really costs: its prompts priced as the provider bills them.

Raw tokens saved is not what a user pays. Providers cache the head of a prompt: the part
of a prompt that repeats the head of the previous one is read from the cache at a fraction
of the list price (0.1x for Anthropic and OpenAI's newest models, 0.5x for gpt-4o), and
Anthropic bills what it writes to the cache at 1.25x (5-minute lifetime). A policy that
cuts tokens but rewrites the head of every prompt can cost more than sending everything.

``price_turns`` prices a policy's prompts turn by turn under these rules, with every rate
from genai-prices through the ledger's ``PriceBook``; ``effective_cost_usd`` sums them, and
``effective_saved_fraction`` compares two policies priced the same way. The cache model
(``PromptCacheRules``) is defined precisely in ``docs/history.md``.

Example:
    >>> turns = [PromptTurn(2000, 0, 50), PromptTurn(2400, 1990, 50)]
    >>> [t.cached_tokens for t in price_turns(turns, "openai:gpt-4o")]
    [0, 1920]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from graphthrift.errors import ConfigError
from graphthrift.ledger.prices import PriceBook, default_price_book, split_model_ref
from graphthrift.text.messages import to_messages
from graphthrift.text.tokens import count_messages

__all__ = [
    "DEFAULT_PRICE_MODELS",
    "PROMPT_CACHE_RULES",
    "PromptCacheRules",
    "PromptTurn",
    "SummarizerCall",
    "TurnPrice",
    "cache_rules_for",
    "effective_cost_usd",
    "effective_costs",
    "effective_saved_fraction",
    "effective_saved_fractions",
    "price_turns",
    "turns_from_messages",
]

#: The two price models every effective cost is reported at: one Anthropic model (0.1x
#: cached reads, 1.25x cache writes) and one OpenAI model (0.5x cached reads, no write
#: surcharge), the two ends of today's prompt-cache discounts.
DEFAULT_PRICE_MODELS: tuple[str, ...] = ("anthropic:claude-sonnet-4-5", "openai:gpt-4o")


@dataclass(frozen=True, slots=True)
class PromptCacheRules:
    """How a provider's prompt cache decides what is read from it (the published rules).

    Attributes:
        min_cacheable_tokens: a prompt shorter than this is neither cached nor read from
            the cache (Anthropic: 1,024 for Sonnet and Opus; OpenAI: 1,024).
        increment_tokens: cache hits cover the shared head rounded down to a multiple of
            this (OpenAI: 128; Anthropic: 1, its breakpoints sit at block boundaries, which
            a message-level common prefix already respects).
        ttl_seconds: a cached prefix left unused this long is gone (both: 5 minutes).
        writes_cached: whether the uncached part of a cacheable prompt is written to the
            cache (priced at the model's cache-write rate, list when genai-prices has none).
            Anthropic bills it at 1.25x; OpenAI writes at list (no surcharge).
    """

    min_cacheable_tokens: int
    increment_tokens: int = 1
    ttl_seconds: float = 300.0
    writes_cached: bool = True

    def __post_init__(self) -> None:
        if self.min_cacheable_tokens < 0:
            raise ConfigError(
                "min_cacheable_tokens", self.min_cacheable_tokens, "must be >= 0 tokens"
            )
        if self.increment_tokens < 1:
            raise ConfigError("increment_tokens", self.increment_tokens, "must be >= 1 token")
        if not self.ttl_seconds > 0:
            raise ConfigError("ttl_seconds", self.ttl_seconds, "must be > 0 seconds")


#: Provider id (as genai-prices names it) -> its prompt-cache rules.
PROMPT_CACHE_RULES: Mapping[str, PromptCacheRules] = MappingProxyType(
    {
        "anthropic": PromptCacheRules(1024, 1, 300.0, True),
        "openai": PromptCacheRules(1024, 128, 300.0, False),
    }
)


def cache_rules_for(price_model: str, book: PriceBook | None = None) -> PromptCacheRules:
    """The prompt-cache rules of ``price_model``'s provider; an unknown provider raises."""
    book = book or default_price_book()
    provider = book.provider(price_model) or split_model_ref(price_model)[0]
    rules = PROMPT_CACHE_RULES.get(provider or "")
    if rules is None:
        raise ConfigError(
            "price_model",
            price_model,
            f"no prompt-cache rules known for provider {provider!r}; pass rules=PromptCacheRules(...)"
            f" (known: {sorted(PROMPT_CACHE_RULES)})",
        )
    return rules


@dataclass(frozen=True, slots=True)
class SummarizerCall:
    """A call a policy made to summarize history; priced uncached, at list."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class PromptTurn:
    """One prompt a policy sent and what it shares with the prompt sent before it.

    Attributes:
        prompt_tokens: tokens of the whole prompt.
        shared_prefix_tokens: tokens at its head identical to the head of the previous
            prompt (0 on the first turn).
        output_tokens: tokens of the model's answer.
        summarizer_calls: summarizer calls the policy made before sending this prompt.
        seconds_since_previous: time since the previous prompt was sent (for the cache TTL).
    """

    prompt_tokens: int
    shared_prefix_tokens: int = 0
    output_tokens: int = 0
    summarizer_calls: tuple[SummarizerCall, ...] = ()
    seconds_since_previous: float = 0.0

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "shared_prefix_tokens", "output_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, value, "must be an int >= 0 tokens")
        if self.shared_prefix_tokens > self.prompt_tokens:
            raise ConfigError(
                "shared_prefix_tokens",
                self.shared_prefix_tokens,
                f"cannot exceed prompt_tokens={self.prompt_tokens}",
            )
        if not math.isfinite(self.seconds_since_previous) or self.seconds_since_previous < 0:
            raise ConfigError(
                "seconds_since_previous", self.seconds_since_previous, "must be >= 0 seconds"
            )


@dataclass(frozen=True, slots=True)
class TurnPrice:
    """One turn as billed: its usage split and its USD cost (prompt, output, summarizer)."""

    prompt_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    prompt_cost_usd: float
    summarizer_cost_usd: float = 0.0
    summarizer_calls: tuple[SummarizerCall, ...] = field(default=())

    @property
    def uncached_tokens(self) -> int:
        """Prompt tokens billed at list (neither read from nor written to the cache)."""
        return self.prompt_tokens - self.cached_tokens - self.cache_write_tokens

    @property
    def cost_usd(self) -> float:
        """The turn's whole cost: its prompt and answer plus its summarizer calls."""
        return self.prompt_cost_usd + self.summarizer_cost_usd


def price_turns(
    turns: Iterable[PromptTurn],
    price_model: str,
    *,
    book: PriceBook | None = None,
    rules: PromptCacheRules | None = None,
    summary_price_model: str | None = None,
) -> list[TurnPrice]:
    """Price each turn as the provider bills it with prompt caching.

    A turn reads from the cache the head it shares with the previous prompt (at most that
    prompt's length, which is all the cache holds), rounded down to
    ``rules.increment_tokens``, when the previous prompt was cacheable (at least
    ``min_cacheable_tokens``), this one is too, and at most ``ttl_seconds`` passed. The rest
    of a cacheable prompt is written to the cache when ``rules.writes_cached``. Summarizer
    calls are priced uncached at ``summary_price_model`` (default ``price_model``).

    Raises:
        ConfigError: ``price_model`` (or the summary model) has no price, or its provider
            no known cache rules and ``rules`` is not given.
    """
    book = book or default_price_book()
    rules = rules or cache_rules_for(price_model, book)
    summary_model = summary_price_model or price_model
    for name, model in (("price_model", price_model), ("summary_price_model", summary_model)):
        if not book.is_known(model):
            raise ConfigError(name, model, "genai-prices has no price for it; see set_price")
    out: list[TurnPrice] = []
    previous_cacheable = False
    previous_tokens = 0  # the cache holds at most the previous prompt
    for turn in turns:
        cacheable = turn.prompt_tokens >= rules.min_cacheable_tokens
        cached = 0
        if cacheable and previous_cacheable and turn.seconds_since_previous <= rules.ttl_seconds:
            shared = min(turn.shared_prefix_tokens, previous_tokens)
            cached = shared // rules.increment_tokens * rules.increment_tokens
            if cached < rules.min_cacheable_tokens:
                cached = 0  # the provider caches no head shorter than its minimum
        written = turn.prompt_tokens - cached if cacheable and rules.writes_cached else 0
        prompt_cost = _cost(
            book, price_model, turn.prompt_tokens, turn.output_tokens, cached, written
        )
        summary_cost = sum(
            _cost(book, summary_model, call.input_tokens, call.output_tokens, 0, 0)
            for call in turn.summarizer_calls
        )
        out.append(
            TurnPrice(
                turn.prompt_tokens,
                cached,
                written,
                turn.output_tokens,
                prompt_cost,
                summary_cost,
                turn.summarizer_calls,
            )
        )
        previous_cacheable, previous_tokens = cacheable, turn.prompt_tokens
    return out


def _cost(
    book: PriceBook, model: str, tokens: int, output: int, cached: int, written: int
) -> float:
    cost = book.cost(model, tokens, output, cached, cache_write_tokens=written)
    if cost is None:  # checked by is_known above; kept for a book edited meanwhile
        raise ConfigError("price_model", model, "genai-prices has no price for it")
    return cost


def effective_cost_usd(
    turns: Iterable[PromptTurn],
    price_model: str,
    *,
    book: PriceBook | None = None,
    rules: PromptCacheRules | None = None,
    summary_price_model: str | None = None,
) -> float:
    """The USD a policy's turns cost with the provider's prompt cache (``price_turns``, summed)."""
    priced = price_turns(
        turns, price_model, book=book, rules=rules, summary_price_model=summary_price_model
    )
    return sum(t.cost_usd for t in priced)


def effective_saved_fraction(policy_cost: float, full_cost: float) -> float:
    """``1 - policy_cost / full_cost``: the share of full history's effective cost saved.

    Both costs must be priced the same way (same price model and cache rules). Negative when
    the policy costs more than sending the full history.
    """
    for name, value in (("policy_cost", policy_cost), ("full_cost", full_cost)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(name, value, "must be a finite cost >= 0 USD")
    if full_cost == 0:
        raise ConfigError("full_cost", full_cost, "must be > 0 USD to compare against")
    return 1.0 - policy_cost / full_cost


def effective_costs(
    turns: Sequence[PromptTurn],
    price_models: Sequence[str] = DEFAULT_PRICE_MODELS,
    *,
    book: PriceBook | None = None,
) -> dict[str, float]:
    """``effective_cost_usd`` at each price model: the mapping the bench JSON reports."""
    return {model: effective_cost_usd(turns, model, book=book) for model in price_models}


def effective_saved_fractions(
    policy_costs: Mapping[str, float], full_costs: Mapping[str, float]
) -> dict[str, float]:
    """``effective_saved_fraction`` per price model; both mappings must price the same models."""
    if set(policy_costs) != set(full_costs):
        raise ConfigError(
            "policy_costs",
            sorted(policy_costs),
            f"must name the same price models as full_costs ({sorted(full_costs)})",
        )
    return {m: effective_saved_fraction(policy_costs[m], full_costs[m]) for m in policy_costs}


def turns_from_messages(
    prompts: Sequence[Sequence[Any]],
    *,
    output_tokens: Sequence[int] | None = None,
    summarizer_calls: Sequence[Sequence[SummarizerCall]] | None = None,
    model: str | None = None,
) -> list[PromptTurn]:
    """``PromptTurn``s from the message lists a policy sent, counted with tiktoken.

    The shared head is the run of leading messages equal to the previous prompt's (cache
    breakpoints sit at message boundaries); messages may be LangChain, LlamaIndex or
    OpenAI-style dicts.
    """
    n = len(prompts)
    for name, seq in (("output_tokens", output_tokens), ("summarizer_calls", summarizer_calls)):
        if seq is not None and len(seq) != n:
            raise ConfigError(name, f"{len(seq)} items", f"must have one item per prompt ({n})")
    turns: list[PromptTurn] = []
    previous: list[Any] = []
    for k, prompt in enumerate(prompts):
        current = to_messages(prompt)
        same = 0
        for a, b in zip(previous, current, strict=False):
            if a != b:
                break
            same += 1
        total = count_messages(current, model).tokens
        shared = count_messages(current[:same], model, reply_priming=False).tokens if same else 0
        turns.append(
            PromptTurn(
                total,
                min(shared, total),
                output_tokens[k] if output_tokens is not None else 0,
                tuple(summarizer_calls[k]) if summarizer_calls is not None else (),
            )
        )
        previous = current
    return turns
