"""Model prices from the ``genai-prices`` package, with user overrides.

We never invent a price: an unknown model costs ``None`` and increments the
``unknown_model_price`` counter. Users add or override prices on a ``PriceBook``
(``set_price`` edits the default one).

Token conventions follow LangChain's ``usage_metadata``: ``input_tokens`` includes the
cached prefix, ``cached_tokens`` is the part of it read from the provider's prompt cache,
and ``output_tokens`` includes reasoning tokens (providers bill reasoning as output).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
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


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for one model.

    ``cached_input_per_mtok`` is the price of input read from the prompt cache; when a
    provider has no cache discount it equals ``input_per_mtok``.
    """

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float
    source: str = "genai-prices"

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """The USD cost of one call at this price."""
        cached = min(max(cached_tokens, 0), input_tokens)
        return (
            (input_tokens - cached) * self.input_per_mtok
            + cached * self.cached_input_per_mtok
            + output_tokens * self.output_per_mtok
        ) / _MTOK


def split_model_ref(model: str) -> tuple[str | None, str]:
    """``"openai:gpt-4o"`` or ``"openai/gpt-4o"`` -> ``("openai", "gpt-4o")``."""
    for sep in (":", "/"):
        head, found, tail = model.partition(sep)
        if found and head.lower() in _PROVIDER_PREFIXES:
            return _PROVIDER_IDS.get(head.lower(), head.lower()), tail
    return None, model


class PriceBook:
    """Resolves model names to prices: user overrides first, then ``genai-prices``.

    Resolution is cached per model, so pricing a call costs a dictionary lookup and a few
    multiplications. Tiered prices (which depend on prompt size) are delegated to
    ``genai-prices`` per call so they stay exact.
    """

    def __init__(self) -> None:
        self._overrides: dict[str, Price] = {}
        self._resolved: dict[str, Any] = {}
        self._lock = threading.Lock()

    def set_price(
        self,
        model: str,
        *,
        input_per_mtok: float,
        output_per_mtok: float,
        cached_input_per_mtok: float | None = None,
    ) -> Price:
        """Add or override the price of ``model`` (USD per million tokens)."""
        for label, value in (
            ("input_per_mtok", input_per_mtok),
            ("output_per_mtok", output_per_mtok),
            ("cached_input_per_mtok", cached_input_per_mtok),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"{label} for {model!r} must be a non-negative number, got {value!r}"
                )
        price = Price(
            float(input_per_mtok),
            float(output_per_mtok),
            float(input_per_mtok if cached_input_per_mtok is None else cached_input_per_mtok),
            source="override",
        )
        with self._lock:
            self._overrides[model.lower()] = price
            self._resolved.clear()
        return price

    def _resolve(self, model: str) -> Any:
        """A ``Price``, a genai-prices ``ModelPrice`` with tiers, or None when unknown."""
        key = model.lower()
        try:
            return self._resolved[key]
        except KeyError:
            pass
        provider_id, bare = split_model_ref(model)
        resolved: Any = self._overrides.get(key) or self._overrides.get(bare.lower())
        if resolved is None:
            try:
                _, info = data_snapshot.get_snapshot().find_provider_model(
                    bare, None, provider_id, None
                )
                model_price = info.get_prices(datetime.now(tz=UTC))
                resolved = _flat_price(model_price) or (provider_id, bare)
            except LookupError:
                resolved = None
        with self._lock:
            self._resolved[key] = resolved
        return resolved

    def price(self, model: str) -> Price | None:
        """The flat price of ``model``, or None when it is unknown or tiered by size."""
        resolved = self._resolve(model)
        return resolved if isinstance(resolved, Price) else None

    def is_known(self, model: str | None) -> bool:
        """Whether a cost can be computed for ``model``."""
        return bool(model) and self._resolve(model or "") is not None

    def cost(
        self, model: str | None, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """USD cost of one call, or None (with a counted warning) for an unknown model."""
        resolved = self._resolve(model) if model else None
        if resolved is None:
            diagnostics.count("unknown_model_price")
            if model and diagnostics.get(f"unknown_model_price:{model}") == 0:
                diagnostics.count(
                    f"unknown_model_price:{model}",
                    "graphthrift: no price known for model %r; cost_usd is None",
                    model,
                )
            return None
        if isinstance(resolved, Price):
            return resolved.cost(input_tokens, output_tokens, cached_tokens)
        provider_id, bare = resolved
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=min(cached_tokens, input_tokens),
        )
        return float(calc_price(usage, bare, provider_id=provider_id).total_price)


def _flat_price(model_price: Any) -> Price | None:
    """Read a genai-prices ``ModelPrice`` whose token prices are flat Decimals."""
    values = (model_price.input_mtok, model_price.output_mtok, model_price.cache_read_mtok)
    if not all(v is None or isinstance(v, Decimal) for v in values):
        return None
    inp = float(model_price.input_mtok or 0)
    out = float(model_price.output_mtok or 0)
    cached = inp if model_price.cache_read_mtok is None else float(model_price.cache_read_mtok)
    return Price(inp, out, cached)


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
) -> Price:
    """Add or override a price in the default price book."""
    return _default.set_price(
        model,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cached_input_per_mtok=cached_input_per_mtok,
    )


def cost_usd(
    model: str | None, input_tokens: int, output_tokens: int, cached_tokens: int = 0
) -> float | None:
    """USD cost of one call with the default price book."""
    return _default.cost(model, input_tokens, output_tokens, cached_tokens)
