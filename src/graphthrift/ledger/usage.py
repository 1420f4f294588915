"""Token usage as providers report it, read into one shape.

Providers and frameworks spell usage differently: LangChain's ``usage_metadata``, OpenAI's
``prompt_tokens``/``completion_tokens`` with ``*_details``, Anthropic's
``cache_read_input_tokens``, Gemini's ``prompt_token_count``. ``read_usage`` accepts any of
them (or an object carrying one) and returns ``Usage`` in LangChain's convention: input
includes the cached prefix and the tokens written to the prompt cache, output includes
reasoning. Cache writes are kept (Anthropic bills them at 1.25x input for a 5-minute
cache and 2x for a 1-hour one), with the 1-hour part counted separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphthrift.ledger.records import plausible_tokens


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: Input tokens written to the provider's prompt cache (part of ``input_tokens``).
    cache_write_tokens: int = 0
    #: The part of ``cache_write_tokens`` written with a 1-hour lifetime.
    cache_write_1h_tokens: int = 0


def _get(mapping: Mapping[str, Any] | Any, *keys: str) -> Any:
    for key in keys:
        value = mapping.get(key) if isinstance(mapping, Mapping) else getattr(mapping, key, None)
        if value is not None:
            return value
    return None


def _details(mapping: Mapping[str, Any] | Any, *keys: str) -> Mapping[str, Any]:
    value = _get(mapping, *keys)
    if isinstance(value, Mapping):
        return value
    if value is not None and hasattr(value, "__dict__"):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return {}


_INPUT_KEYS = (
    "input_tokens",
    "prompt_tokens",
    "prompt_token_count",
    "promptTokenCount",
    "inputTokens",
    "prompt_eval_count",
)
_OUTPUT_KEYS = (
    "output_tokens",
    "completion_tokens",
    "candidates_token_count",
    "candidatesTokenCount",
    "outputTokens",
    "eval_count",
)
_CACHED_KEYS = (
    "cache_read_input_tokens",
    "cached_content_token_count",
    "cached_tokens",
    "cacheReadInputTokens",
)


#: Raw usage spellings whose input count excludes cache reads and writes.
_APART_KEYS = (
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cacheReadInputTokens",
    "cacheWriteInputTokens",
)


def read_usage(raw: Mapping[str, Any] | Any | None) -> Usage | None:
    """Read a usage mapping in any known spelling; None when absent or implausible.

    Implausible values (negative, fractional, absurdly large) count a ``bad_usage`` warning
    and yield None, so the caller falls back to an estimate instead of recording garbage.
    """
    if raw is None:
        return None
    inp = _get(raw, *_INPUT_KEYS)
    out = _get(raw, *_OUTPUT_KEYS)
    if inp is None and out is None:
        return None
    input_tokens = plausible_tokens("input_tokens", inp if inp is not None else 0)
    output_tokens = plausible_tokens("output_tokens", out if out is not None else 0)
    if input_tokens is None or output_tokens is None:
        return None
    in_details = _details(
        raw, "input_token_details", "prompt_tokens_details", "input_tokens_details"
    )
    out_details = _details(
        raw, "output_token_details", "completion_tokens_details", "output_tokens_details"
    )
    cached_raw = _get(in_details, "cache_read", "cached_tokens")
    if cached_raw is None:
        cached_raw = _get(raw, *_CACHED_KEYS)
    reasoning_raw = _get(out_details, "reasoning", "reasoning_tokens")
    if reasoning_raw is None:
        reasoning_raw = _get(raw, "thoughts_token_count", "reasoning_tokens")
    cached = plausible_tokens("cached_tokens", cached_raw, fallback="ignoring it") or 0
    reasoning = plausible_tokens("reasoning_tokens", reasoning_raw, fallback="ignoring it") or 0
    written, written_1h = _cache_writes(raw, in_details)
    apart = _get(raw, *_APART_KEYS) is not None
    if apart and _get(raw, "input_token_details") is None:
        # Anthropic's and Bedrock Converse's raw usage count cache reads and writes outside
        # their input tokens.
        input_tokens += cached + written
    if _get(raw, "thoughts_token_count") is not None and _get(raw, "output_token_details") is None:
        output_tokens += reasoning  # Gemini reports thoughts outside candidates
    cached = min(cached, input_tokens)
    written = min(written, input_tokens - cached)
    return Usage(
        input_tokens,
        output_tokens,
        cached,
        min(reasoning, output_tokens),
        written,
        min(written_1h, written),
    )


def _cache_writes(raw: Mapping[str, Any] | Any, in_details: Mapping[str, Any]) -> tuple[int, int]:
    """Tokens written to the prompt cache, and the 1-hour part of them.

    Anthropic's raw usage has ``cache_creation_input_tokens`` plus a ``cache_creation``
    object split into ``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``.
    LangChain's ``input_token_details`` carries ``cache_creation`` and the same two keys,
    zeroing ``cache_creation`` when the split is given, so the split wins when present.
    """
    split = _details(raw, "cache_creation")

    def part(key: str) -> int:
        value = _get(in_details, key)
        return (
            plausible_tokens(
                key, value if value is not None else _get(split, key), fallback="ignoring it"
            )
            or 0
        )

    five, hour = part("ephemeral_5m_input_tokens"), part("ephemeral_1h_input_tokens")
    total_raw = _get(in_details, "cache_creation")
    if total_raw is None:
        total_raw = _get(raw, "cache_creation_input_tokens", "cacheWriteInputTokens")
    total = plausible_tokens("cache_creation_input_tokens", total_raw, fallback="ignoring it")
    return max(total or 0, five + hour), hour
