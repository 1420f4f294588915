"""Model prices from the ``genai-prices`` package, with user overrides.

Long because: ``PriceBook`` is one lookup (override, then genai-prices, then the rules'
multipliers) and its cost arithmetic, which must agree line by line.

We never invent a price: an unknown model costs ``None`` and increments the
``unknown_model_price`` counter. Users add or override prices on a ``PriceBook``
(``set_price`` edits the default one).

Token conventions follow LangChain's ``usage_metadata``: ``input_tokens`` includes the
cached prefix and the tokens written to the cache, ``cached_tokens`` is the part read from
the provider's prompt cache, ``cache_write_tokens`` the part written to it (of which
``cache_write_1h_tokens`` with a 1-hour lifetime), and ``output_tokens`` includes reasoning
tokens (providers bill reasoning as output, and count it in their output already, so it is
never added twice).

Where genai-prices has no rate, ``PricingRules`` holds the providers' published multipliers:
the one place to read or override them (``set_pricing_rules`` for the default book).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from genai_prices import Usage, calc_price, data_snapshot

from graphthrift import diagnostics

_MTOK = 1_000_000
_PROVIDER_PREFIXES = {
    "openai",
    "anthropic",
    "google",
    "google_genai",
    "google_vertexai",
    "vertexai",
    "azure",
    "azure_openai",
    "groq",
    "mistral",
    "mistralai",
    "deepseek",
    "x-ai",
    "xai",
    "cohere",
    "aws",
    "bedrock",
    "bedrock_converse",
    "together",
    "fireworks",
    "openrouter",
    "perplexity",
}
_PROVIDER_IDS = {
    "google_genai": "google",
    "google_vertexai": "google",
    "vertexai": "google",
    "azure_openai": "azure",
    "mistralai": "mistral",
    "xai": "x-ai",
    "bedrock": "aws",
    "bedrock_converse": "aws",
}


#: Published Batch API discounts (fraction off the whole bill) where genai-prices has no
#: batch rate: OpenAI Batch API, Anthropic Message Batches, Gemini and Vertex batch
#: prediction, Azure OpenAI global batch, Bedrock batch inference, Mistral batch: all 50%.
BATCH_DISCOUNTS: Mapping[str, float] = MappingProxyType(
    {"openai": 0.5, "anthropic": 0.5, "google": 0.5, "azure": 0.5, "aws": 0.5, "mistral": 0.5}
)


@dataclass(frozen=True, slots=True)
class PricingRules:
    """The published multipliers used where genai-prices has no rate of its own.

    Attributes:
        cache_write_1h_multiplier: price of a 1-hour prompt-cache write as a multiple of the
            base input price, for models that charge cache writes but whose genai-prices
            entry has no 1-hour rate. Anthropic's published multiplier is 2x (5-minute
            writes are 1.25x, which genai-prices carries as ``cache_write_mtok``).
        batch_discounts: provider id -> fraction taken off a Batch API call, for models
            whose genai-prices entry has no batch price variant.

    Example:
        >>> set_pricing_rules(batch_discounts={**BATCH_DISCOUNTS, "groq": 0.25})
    """

    cache_write_1h_multiplier: float = 2.0
    batch_discounts: Mapping[str, float] = field(default_factory=lambda: dict(BATCH_DISCOUNTS))

    def __post_init__(self) -> None:
        _check_number("cache_write_1h_multiplier", self.cache_write_1h_multiplier, "rules")
        for provider, discount in self.batch_discounts.items():
            _check_number(f"batch_discounts[{provider!r}]", discount, "rules")
            if discount >= 1:
                raise ValueError(
                    f"batch_discounts[{provider!r}] is a fraction off the bill in [0, 1),"
                    f" got {discount!r}"
                )


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for one model.

    ``cached_input_per_mtok`` is the price of input read from the prompt cache; when a
    provider has no cache discount it equals ``input_per_mtok``. ``cache_write_per_mtok``
    prices 5-minute (default lifetime) cache writes and ``cache_write_1h_per_mtok`` 1-hour
    ones; None means no surcharge (the input price, or the 5-minute price for 1-hour writes).
    """

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float
    source: str = "genai-prices"
    cache_write_per_mtok: float | None = None
    cache_write_1h_per_mtok: float | None = None

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> float:
        """The USD cost of one call at this price."""
        cached = min(max(cached_tokens, 0), input_tokens)
        written = min(max(cache_write_tokens, 0), input_tokens - cached)
        hour = min(max(cache_write_1h_tokens, 0), written)
        write = (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )
        write_1h = write if self.cache_write_1h_per_mtok is None else self.cache_write_1h_per_mtok
        return (
            (input_tokens - cached - written) * self.input_per_mtok
            + cached * self.cached_input_per_mtok
            + (written - hour) * write
            + hour * write_1h
            + output_tokens * self.output_per_mtok
        ) / _MTOK


@dataclass(frozen=True, slots=True)
class _Rates:
    """One genai-prices price set (standard or batch) and how to ask ``calc_price`` for it."""

    flat: Price | None
    has_write_rate: bool
    has_1h_rate: bool
    context: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class _Listed:
    """A genai-prices model: its provider, its id there, its standard and batch rates."""

    provider_id: str
    model_ref: str
    standard: _Rates
    batch: _Rates | None


_BATCH_CONTEXT: Mapping[str, str] = {"processing": "batch"}


def _check_number(label: str, value: object, model: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{label} for {model!r} must be a non-negative number, got {value!r}")


def split_model_ref(model: str) -> tuple[str | None, str]:
    """``"openai:gpt-4o"`` or ``"openai/gpt-4o"`` -> ``("openai", "gpt-4o")``."""
    for sep in (":", "/"):
        head, found, tail = model.partition(sep)
        if found and head.lower() in _PROVIDER_PREFIXES:
            return _PROVIDER_IDS.get(head.lower(), head.lower()), tail
    return None, model


class PriceBook:
    """Resolves model names to prices: user overrides first, then ``genai-prices``.

    Resolution is cached per model, so pricing a call with flat prices costs a dictionary
    lookup and a few multiplications. Tiered prices (which depend on prompt size) are
    delegated to ``genai-prices`` per call so they stay exact.

    Args:
        rules: the multipliers used where genai-prices has no rate (``PricingRules``).
    """

    def __init__(self, rules: PricingRules | None = None) -> None:
        self._overrides: dict[str, Price] = {}
        self._resolved: dict[str, Price | _Listed | None] = {}
        self._lock = threading.Lock()
        self.rules = rules or PricingRules()

    def set_rules(self, **changes: Any) -> PricingRules:
        """Override some ``PricingRules`` fields (``cache_write_1h_multiplier``, ...)."""
        rules = replace(self.rules, **changes)
        with self._lock:
            self.rules = rules
            self._resolved.clear()
        return rules

    def set_price(
        self,
        model: str,
        *,
        input_per_mtok: float,
        output_per_mtok: float,
        cached_input_per_mtok: float | None = None,
        cache_write_per_mtok: float | None = None,
        cache_write_1h_per_mtok: float | None = None,
    ) -> Price:
        """Add or override the price of ``model`` (USD per million tokens).

        Cache writes default to the input price (no surcharge). Give
        ``cache_write_per_mtok`` for a provider that charges one; 1-hour writes then default
        to ``PricingRules.cache_write_1h_multiplier`` times the input price.
        """
        for label, value in (
            ("input_per_mtok", input_per_mtok),
            ("output_per_mtok", output_per_mtok),
            ("cached_input_per_mtok", cached_input_per_mtok),
            ("cache_write_per_mtok", cache_write_per_mtok),
            ("cache_write_1h_per_mtok", cache_write_1h_per_mtok),
        ):
            if value is not None:
                _check_number(label, value, model)
        write_1h = cache_write_1h_per_mtok
        if write_1h is None and cache_write_per_mtok is not None:
            write_1h = float(input_per_mtok) * self.rules.cache_write_1h_multiplier
        price = Price(
            float(input_per_mtok),
            float(output_per_mtok),
            float(input_per_mtok if cached_input_per_mtok is None else cached_input_per_mtok),
            source="override",
            cache_write_per_mtok=None
            if cache_write_per_mtok is None
            else float(cache_write_per_mtok),
            cache_write_1h_per_mtok=None if write_1h is None else float(write_1h),
        )
        with self._lock:
            self._overrides[model.lower()] = price
            self._resolved.clear()
        return price

    def _resolve(self, model: str) -> Price | _Listed | None:
        """An override ``Price``, a genai-prices ``_Listed``, or None when unknown."""
        key = model.lower()
        try:
            return self._resolved[key]
        except KeyError:
            pass
        provider_id, bare = split_model_ref(model)
        resolved: Price | _Listed | None = self._overrides.get(key) or self._overrides.get(
            bare.lower()
        )
        if resolved is None:
            resolved = self._listed(provider_id, bare)
        with self._lock:
            self._resolved[key] = resolved
        return resolved

    def _listed(self, provider_id: str | None, bare: str) -> _Listed | None:
        try:
            provider, info = data_snapshot.get_snapshot().find_provider_model(
                bare, None, provider_id, None
            )
        except LookupError:
            return None
        now = datetime.now(tz=UTC)
        batch = any(
            variant.when == _BATCH_CONTEXT
            and (variant.constraint is None or variant.constraint.active(now))
            for variant in info.price_variants or ()
        )
        return _Listed(
            provider.id,
            info.id,
            self._rates(info.get_prices(now), None),
            self._rates(info.get_prices(now, dict(_BATCH_CONTEXT)), _BATCH_CONTEXT)
            if batch
            else None,
        )

    def _rates(self, model_price: Any, context: Mapping[str, str] | None) -> _Rates:
        has_write = model_price.cache_write_mtok is not None
        has_1h = model_price.cache_write_1h_mtok is not None
        flat = _flat_price(model_price)
        if flat is not None and has_write and not has_1h:
            flat = replace(
                flat,
                cache_write_1h_per_mtok=flat.input_per_mtok * self.rules.cache_write_1h_multiplier,
            )
        return _Rates(flat, has_write, has_1h, context)

    def price(self, model: str) -> Price | None:
        """The flat price of ``model``, or None when it is unknown or tiered by size."""
        resolved = self._resolve(model)
        return resolved.standard.flat if isinstance(resolved, _Listed) else resolved

    def provider(self, model: str) -> str | None:
        """The genai-prices provider id ``model`` resolves to (None for overrides/unknown)."""
        resolved = self._resolve(model)
        return resolved.provider_id if isinstance(resolved, _Listed) else None

    def is_known(self, model: str | None) -> bool:
        """Whether a cost can be computed for ``model``."""
        return bool(model) and self._resolve(model or "") is not None

    def cost(
        self,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        *,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        batch: bool = False,
    ) -> float | None:
        """USD cost of one call, or None (with a counted warning) for an unknown model.

        ``cache_write_tokens`` (part of ``input_tokens``) are priced at the model's cache
        write rate, ``cache_write_1h_tokens`` (part of them) at its 1-hour rate. ``batch``
        prices a Batch API call: the batch rate where genai-prices lists one,
        else the provider's discount in ``PricingRules.batch_discounts``.
        """
        resolved = self._resolve(model) if model else None
        if resolved is None:
            _count_unknown(model)
            return None
        cached = min(max(cached_tokens, 0), input_tokens)
        written = min(max(cache_write_tokens, 0), input_tokens - cached)
        hour = min(max(cache_write_1h_tokens, 0), written)
        counts = (input_tokens, output_tokens, cached, written, hour)
        if isinstance(resolved, Price):
            total = resolved.cost(*counts)
            if not batch:
                return total
            return total * (1 - self._batch_discount(split_model_ref(model or "")[0]))
        if batch and resolved.batch is not None:
            return self._listed_cost(resolved, resolved.batch, *counts)
        total = self._listed_cost(resolved, resolved.standard, *counts)
        return total * (1 - self._batch_discount(resolved.provider_id)) if batch else total

    def _listed_cost(
        self,
        listed: _Listed,
        rates: _Rates,
        input_tokens: int,
        output_tokens: int,
        cached: int,
        written: int,
        hour: int,
    ) -> float:
        if rates.flat is not None:
            return rates.flat.cost(input_tokens, output_tokens, cached, written, hour)
        ref, provider_id = listed.model_ref, listed.provider_id
        context = dict(rates.context) if rates.context else None
        if rates.has_1h_rate or not rates.has_write_rate or not hour:
            usage = Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cached,
                cache_write_tokens=written,
            )
            if hour:
                usage.cache_write_1h_tokens = hour
            return float(
                calc_price(usage, ref, provider_id=provider_id, price_context=context).total_price
            )
        # No 1-hour rate listed: those tokens cost the published multiple of the input
        # price, taken at the size tier the whole prompt falls in.
        rest = calc_price(
            Usage(
                input_tokens=input_tokens - hour,
                output_tokens=output_tokens,
                cache_read_tokens=cached,
                cache_write_tokens=written - hour,
            ),
            ref,
            provider_id=provider_id,
            price_context=context,
        ).total_price
        plain = calc_price(
            Usage(input_tokens=input_tokens), ref, provider_id=provider_id, price_context=context
        )
        per_token = float(plain.input_price) / input_tokens
        return float(rest) + hour * per_token * self.rules.cache_write_1h_multiplier

    def _batch_discount(self, provider_id: str | None) -> float:
        discount = self.rules.batch_discounts.get(provider_id or "")
        if discount is None:
            diagnostics.count(
                "unknown_batch_discount",
                "graphthrift: no batch rate or discount known for provider %r; priced at list",
                provider_id,
            )
            return 0.0
        return discount


def _count_unknown(model: str | None) -> None:
    diagnostics.count("unknown_model_price")
    if model and diagnostics.get(f"unknown_model_price:{model}") == 0:
        diagnostics.count(
            f"unknown_model_price:{model}",
            "graphthrift: no price known for model %r; cost_usd is None",
            model,
        )


def _flat_price(model_price: Any) -> Price | None:
    """Read a genai-prices ``ModelPrice`` whose token prices are flat Decimals."""
    values = (
        model_price.input_mtok,
        model_price.output_mtok,
        model_price.cache_read_mtok,
        model_price.cache_write_mtok,
        model_price.cache_write_1h_mtok,
    )
    if not all(v is None or isinstance(v, Decimal) for v in values):
        return None
    inp = float(model_price.input_mtok or 0)
    out = float(model_price.output_mtok or 0)
    read = inp if model_price.cache_read_mtok is None else float(model_price.cache_read_mtok)
    write, write_1h = model_price.cache_write_mtok, model_price.cache_write_1h_mtok
    return Price(
        inp,
        out,
        read,
        cache_write_per_mtok=None if write is None else float(write),
        cache_write_1h_per_mtok=None if write_1h is None else float(write_1h),
    )


_default = PriceBook()


def default_price_book() -> PriceBook:
    """The process-wide price book that ``set_price`` edits and the ledger uses by default."""
    return _default


def set_price(
    model: str,
    *,
    input_per_mtok: float,
    output_per_mtok: float,
    cached_input_per_mtok: float | None = None,
    cache_write_per_mtok: float | None = None,
    cache_write_1h_per_mtok: float | None = None,
) -> Price:
    """Add or override a price in the default price book."""
    return _default.set_price(
        model,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cached_input_per_mtok=cached_input_per_mtok,
        cache_write_per_mtok=cache_write_per_mtok,
        cache_write_1h_per_mtok=cache_write_1h_per_mtok,
    )


def set_pricing_rules(**changes: Any) -> PricingRules:
    """Override ``PricingRules`` fields of the default price book (1h multiplier, batch)."""
    return _default.set_rules(**changes)


def cost_usd(
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    *,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    batch: bool = False,
) -> float | None:
    """USD cost of one call with the default price book."""
    return _default.cost(
        model,
        input_tokens,
        output_tokens,
        cached_tokens,
        cache_write_tokens=cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        batch=batch,
    )
