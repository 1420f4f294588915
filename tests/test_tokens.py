"""Token counting: offline tiktoken, model families, LangChain message lists."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from graphthrift.text import to_message, tokens


def test_seeds_tiktoken_cache_from_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    cache = tokens.seed_tiktoken_cache(["o200k_base", "cl100k_base"])
    assert cache == tmp_path
    for name in ("o200k_base", "cl100k_base"):
        key = hashlib.sha1(
            f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken".encode()
        ).hexdigest()
        data = (tmp_path / key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == tokens._EXPECTED_SHA256[name]


def test_encoding_per_model_family() -> None:
    assert tokens.encoding_name_for("gpt-4o") == ("o200k_base", True)
    assert tokens.encoding_name_for("openai:gpt-4o-mini") == ("o200k_base", True)
    assert tokens.encoding_name_for("gpt-4") == ("cl100k_base", True)
    assert tokens.encoding_name_for("gpt-3.5-turbo") == ("cl100k_base", True)
    name, exact = tokens.encoding_name_for("claude-3-5-sonnet-latest")
    assert (name, exact) == ("o200k_base", False)
    assert tokens.encoding_name_for(None) == ("o200k_base", False)


def test_count_text_matches_tiktoken() -> None:
    text = "Refunds for order #A-1234 take 5-7 business days. <|endoftext|> is plain text here."
    expected = len(tokens.get_encoding("o200k_base").encode(text, disallowed_special=()))
    assert tokens.count_text(text, "gpt-4o") == expected
    assert tokens.count_text("", "gpt-4o") == 0


def test_count_messages_includes_tool_calls_and_results() -> None:
    base = [SystemMessage("You are terse."), HumanMessage("What is 2+2?")]
    call = AIMessage(
        "", tool_calls=[{"name": "calculator", "args": {"expression": "2+2"}, "id": "call_1"}]
    )
    result = ToolMessage("4", tool_call_id="call_1")
    without = tokens.count_messages(base, "gpt-4o")
    with_tools = tokens.count_messages([*base, call, result], "gpt-4o")
    assert not with_tools.estimated
    enc = tokens.get_encoding("o200k_base")
    args_tokens = len(enc.encode('{"expression":"2+2"}'))
    assert with_tools.tokens - without.tokens >= args_tokens + len(enc.encode("calculator")) + len(
        enc.encode("4")
    )


def test_content_blocks_and_none_content() -> None:
    plain = tokens.count_messages([HumanMessage("hello there")], "gpt-4o").tokens
    blocks = tokens.count_messages(
        [HumanMessage([{"type": "text", "text": "hello there"}])], "gpt-4o"
    ).tokens
    assert plain == blocks
    assert tokens.count_messages([{"role": "assistant", "content": None}], "gpt-4o").tokens > 0
    assert tokens.count_messages([], "gpt-4o").tokens == 0


def test_images_and_unknown_models_are_flagged_as_estimates() -> None:
    msg = HumanMessage(
        [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
        ]
    )
    count = tokens.count_messages([msg], "gpt-4o")
    assert count.estimated and "image" in count.reasons
    unknown = tokens.count_messages([HumanMessage("hi")], "my-local-llama")
    assert unknown.estimated and unknown.reasons[0].startswith("tokenizer:")


def test_unknown_message_types_are_refused_with_the_type_name() -> None:
    with pytest.raises(TypeError, match="int"):
        tokens.count_messages([42], "gpt-4o")
    with pytest.raises(TypeError, match="role"):
        to_message({"role": "narrator", "content": "x"})


def test_llamaindex_messages_are_counted_like_langchain_ones() -> None:
    from llama_index.core.llms import ChatMessage, MessageRole

    li = [
        ChatMessage(role=MessageRole.SYSTEM, content="be brief"),
        ChatMessage(role=MessageRole.USER, content="hi there"),
    ]
    lc = [SystemMessage("be brief"), HumanMessage("hi there")]
    assert tokens.count_messages(li, "gpt-4o").tokens == tokens.count_messages(lc, "gpt-4o").tokens


def test_works_without_network(tmp_path: Path) -> None:
    """A fresh cache directory is filled from packages; nothing is downloaded."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    code = "from graphthrift.text.tokens import count_text; print(count_text('hello world', 'gpt-4o'), count_text('hello world', 'gpt-4'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]
