"""Token usage as providers report it, read into one shape.

Providers and frameworks spell usage differently: LangChain's ``usage_metadata``, OpenAI's
``prompt_tokens``/``completion_tokens`` with ``*_details``, Anthropic's
``cache_read_input_tokens``, Gemini's ``prompt_token_count``. ``read_usage`` accepts any of
them (or an object carrying one) and returns ``Usage`` in LangChain's convention: input
includes the cached prefix and the tokens written to the prompt cache, output includes
reasoning. Cache writes are kept (Anthropic bills them at 1.25x input for a 5-minute
cache and 2x for a 1-hour one), with the 1-hour part counted separately.

Some usage carries a write count without its 5m/1h split: langchain-anthropic builds a
stream's usage from ``message_delta``, which has no ``cache_creation`` object (the split is
only in ``message_start``, which it drops), and Bedrock reports no split at all.
``settle_cache_write_split`` then takes the split from the request's cache breakpoints
(every breakpoint of one lifetime means every write has it) and, where they do not settle
it, prices every write at the dearer 1-hour rate and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
    #: The part of ``cache_write_tokens`` the provider gave no 5m/1h lifetime for (counted
    #: as 5-minute until ``settle_cache_write_split`` settles it). Not part of equality: it
    #: says what is known about the counts, not what they are.
    cache_write_unsplit_tokens: int = field(default=0, compare=False)


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
    written, written_1h, split_given = _cache_writes(raw, in_details)
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
        0 if split_given else written,
    )


def _cache_writes(
    raw: Mapping[str, Any] | Any, in_details: Mapping[str, Any]
) -> tuple[int, int, bool]:
    """Tokens written to the prompt cache, the 1-hour part of them, and whether a split was given.

    Anthropic's raw usage has ``cache_creation_input_tokens`` plus a ``cache_creation``
    object split into ``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``.
    LangChain's ``input_token_details`` carries ``cache_creation`` and the same two keys,
    zeroing ``cache_creation`` when the split is given, so the split wins when present.
    """
    split = _details(raw, "cache_creation")

    keys = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    given = [_get(in_details, key) for key in keys]
    given = [g if g is not None else _get(split, key) for g, key in zip(given, keys, strict=True)]
    five, hour = (
        plausible_tokens(key, value, fallback="ignoring it") or 0
        for key, value in zip(keys, given, strict=True)
    )
    total_raw = _get(in_details, "cache_creation")
    if total_raw is None:
        total_raw = _get(raw, "cache_creation_input_tokens", "cacheWriteInputTokens")
    total = plausible_tokens("cache_creation_input_tokens", total_raw, fallback="ignoring it")
    return max(total or 0, five + hour), hour, any(g is not None for g in given)


#: How a record's 5m/1h write split was settled when the provider's usage lacked it.
SplitSource = Literal["request", "assumed_1h"]
#: Keys whose mapping value is a prompt-cache breakpoint (Anthropic's, Bedrock Converse's).
_BREAKPOINT_KEYS = ("cache_control", "cachePoint")
_DEFAULT_TTL = "5m"  # Anthropic's and Bedrock's lifetime when a breakpoint names none
_MAX_WALK = 50_000  # nodes: a request bigger than this is not searched further


def cache_write_ttls(*request: Any) -> frozenset[str]:
    """The lifetimes (``"5m"``, ``"1h"``) of every cache breakpoint found in ``request``.

    ``request`` is whatever the adapter saw of the call: messages (objects with ``content``
    or mappings), content blocks, tools, and the call's parameters (a top-level
    ``cache_control``). A breakpoint that names no ``ttl`` has the default 5 minutes.
    """
    found: set[str] = set()
    stack: list[Any] = list(request)
    seen = 0
    while stack and seen < _MAX_WALK:
        node = stack.pop()
        seen += 1
        if isinstance(node, str | bytes | int | float | bool) or node is None:
            continue
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in _BREAKPOINT_KEYS and isinstance(value, Mapping):
                    ttl = value.get("ttl")
                    found.add(ttl if isinstance(ttl, str) and ttl else _DEFAULT_TTL)
                elif not isinstance(value, str):
                    stack.append(value)
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif hasattr(node, "content"):  # a message object (LangChain, LlamaIndex)
            stack.append(getattr(node, "content", None))
            stack.append(getattr(node, "blocks", None))
    return frozenset(found)


def settle_cache_write_split(
    usage: Usage, ttls: frozenset[str]
) -> tuple[Usage, SplitSource | None]:
    """Give ``usage`` a 5m/1h write split when the provider's count came without one.

    Breakpoints of a single lifetime in the request mean every write has that lifetime
    ("request"). No breakpoint in sight, or both lifetimes, leave the split unknown: every
    write is then priced at the 1-hour rate, the dearer one, so the ledger never books less
    than the bill ("assumed_1h"; the caller flags the record). None: nothing to settle.
    """
    unsplit = min(usage.cache_write_unsplit_tokens, usage.cache_write_tokens)
    if unsplit <= 0:
        return usage, None
    hour = usage.cache_write_1h_tokens
    how: SplitSource = "request" if ttls in ({"5m"}, {"1h"}) else "assumed_1h"
    if ttls != {"5m"}:
        hour = min(hour + unsplit, usage.cache_write_tokens)
    return replace(usage, cache_write_1h_tokens=hour, cache_write_unsplit_tokens=0), how
