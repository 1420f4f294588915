"""The wire server answers the real clients in the providers' shapes."""

from __future__ import annotations

import pytest
from wire_server import WireServer


def test_openai_chat_json_and_stream(wire: WireServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=wire.openai_url, api_key="sk-test", max_retries=0)
    wire.reply(input_tokens=100, cached_tokens=64, output_tokens=30, reasoning_tokens=12)
    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.usage is not None and done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 64
    assert done.usage.completion_tokens_details.reasoning_tokens == 12  # type: ignore[union-attr]
    wire.reply(text="one two three", input_tokens=50, output_tokens=3)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 50  # type: ignore[union-attr]
    assert wire.bodies()[-1]["stream_options"] == {"include_usage": True}


def test_anthropic_stream_splits_usage_between_start_and_delta(wire: WireServer) -> None:
    from anthropic import Anthropic

    client = Anthropic(base_url=wire.anthropic_url, api_key="sk-ant-test", max_retries=0)
    wire.reply(
        input_tokens=1_000,
        cached_tokens=600,
        cache_write_5m=100,
        cache_write_1h=200,
        output_tokens=20,
        delta_usage="minimal",
    )
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.usage.input_tokens == 100
    assert message.usage.cache_read_input_tokens == 600
    assert message.usage.cache_creation_input_tokens == 300
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 200
    assert message.usage.output_tokens == 20


@pytest.mark.parametrize("status", [400, 429, 500, 529])
def test_anthropic_errors(wire: WireServer, status: int) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=wire.anthropic_url, api_key="k", max_retries=0)
    wire.reply(status=status, retry_after="1" if status == 429 else None)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == status
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"


def test_responses_api_stream(wire: WireServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=wire.openai_url, api_key="sk-test", max_retries=0)
    wire.reply(text="a b", input_tokens=70, cached_tokens=20, output_tokens=40, reasoning_tokens=30)
    events = list(client.responses.create(model="o3-mini", input="hi", stream=True))
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.usage.output_tokens_details.reasoning_tokens == 30  # type: ignore[union-attr]
    assert final.response.output_text == "a b"
