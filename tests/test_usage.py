"""Usage in every provider's spelling reads into one convention."""

from __future__ import annotations

import pytest

from graphthrift import diagnostics
from graphthrift.ledger import Usage, read_usage


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {
                "input_tokens": 100,
                "output_tokens": 20,
                "input_token_details": {"cache_read": 60},
                "output_token_details": {"reasoning": 5},
            },
            Usage(100, 20, 60, 5),
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 7},
            },
            Usage(100, 20, 64, 7),
        ),
        (
            {
                "input_tokens": 100,
                "output_tokens": 20,
                "input_tokens_details": {"cached_tokens": 30},
                "output_tokens_details": {"reasoning_tokens": 4},
            },
            Usage(100, 20, 30, 4),
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 20,
                "cache_read_input_tokens": 500,
                "cache_creation_input_tokens": 200,
            },
            Usage(710, 20, 500, 0, 200),
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 20,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": 2000,
            },
            Usage(2010, 20, 0, 0, 2000),
        ),
        (
            {
                "prompt_token_count": 100,
                "candidates_token_count": 20,
                "cached_content_token_count": 50,
                "thoughts_token_count": 9,
            },
            Usage(100, 29, 50, 9),
        ),
        ({"inputTokens": 11, "outputTokens": 3}, Usage(11, 3)),
        ({"prompt_eval_count": 12, "eval_count": 4}, Usage(12, 4)),
    ],
    ids=[
        "langchain",
        "openai-chat",
        "openai-responses",
        "anthropic",
        "anthropic-write-only",
        "gemini",
        "bedrock",
        "ollama",
    ],
)
def test_spellings(raw: dict[str, object], expected: Usage) -> None:
    assert read_usage(raw) == expected


def test_absent_and_implausible_usage() -> None:
    assert read_usage(None) is None
    assert read_usage({"total_tokens": 5}) is None
    before = diagnostics.get("bad_usage")
    assert read_usage({"input_tokens": -1, "output_tokens": 3}) is None
    assert read_usage({"input_tokens": 2.5, "output_tokens": 3}) is None
    assert read_usage({"input_tokens": True, "output_tokens": 3}) is None
    assert diagnostics.get("bad_usage") == before + 3
    assert read_usage(
        {"input_tokens": 10, "output_tokens": 3, "input_token_details": {"cache_read": 99}}
    ) == Usage(10, 3, 10, 0)


def test_anthropic_cache_writes_are_kept_with_their_lifetimes() -> None:
    """Anthropic bills writes at 1.25x (5 min) and 2x (1 h): both counts must survive."""
    raw = {
        "input_tokens": 12,
        "output_tokens": 30,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 700,
        "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 400},
    }
    assert read_usage(raw) == Usage(812, 30, 100, 0, 700, 400)


def test_langchain_anthropic_usage_metadata_keeps_the_split() -> None:
    """langchain-anthropic zeroes ``cache_creation`` when it gives the 5m/1h split."""
    meta = {
        "input_tokens": 812,
        "output_tokens": 30,
        "total_tokens": 842,
        "input_token_details": {
            "cache_read": 100,
            "cache_creation": 0,
            "ephemeral_5m_input_tokens": 300,
            "ephemeral_1h_input_tokens": 400,
        },
    }
    assert read_usage(meta) == Usage(812, 30, 100, 0, 700, 400)
    plain = {
        "input_tokens": 812,
        "output_tokens": 30,
        "input_token_details": {"cache_read": 100, "cache_creation": 700},
    }
    assert read_usage(plain) == Usage(812, 30, 100, 0, 700, 0)


def test_negative_cache_write_is_ignored_with_a_warning() -> None:
    before = diagnostics.get("bad_usage")
    raw = {"input_tokens": 10, "output_tokens": 3, "cache_creation_input_tokens": -5}
    assert read_usage(raw) == Usage(10, 3, 0, 0, 0, 0)
    assert diagnostics.get("bad_usage") == before + 1


def test_bedrock_converse_cache_counts_are_outside_input() -> None:
    """Bedrock Converse: totalTokens = inputTokens + outputTokens + cache reads + writes."""
    raw = {
        "inputTokens": 20,
        "outputTokens": 7,
        "cacheReadInputTokens": 1_000,
        "cacheWriteInputTokens": 300,
        "totalTokens": 1_327,
    }
    assert read_usage(raw) == Usage(1_320, 7, 1_000, 0, 300, 0)
