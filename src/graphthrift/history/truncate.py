"""Token counts of messages, and truncation that keeps head, tail and valid tool-call JSON.

A message over the pruner's per-message cap is sent cut, with a visible marker, the same
way every turn; tool-call arguments give up tokens in proportion and stay valid JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

from graphthrift.text.messages import Message, ToolCall
from graphthrift.text.tokens import count_message, count_text, encoding_name_for, get_encoding

__all__ = [
    "MIN_TRUNCATED_TOKENS",
    "TRUNCATION_MARKER",
    "message_tokens",
    "truncate_message",
    "truncate_text",
]

TRUNCATION_MARKER = "[graphthrift: {n} tokens truncated]"
MIN_TRUNCATED_TOKENS = 16


@lru_cache(maxsize=65536)
def _count_text_message(
    model: str | None,
    role: str,
    text: str,
    name: str | None,
    tool_call_id: str | None,
    calls: tuple[ToolCall, ...],
) -> int:
    return count_message(Message(role, text, calls, tool_call_id, name), model).tokens  # type: ignore[arg-type]


def message_tokens(message: Message, model: str | None) -> int:
    """Tokens of one message (cached by content for text messages)."""
    if isinstance(message.content, str):
        return _count_text_message(
            model,
            message.role,
            message.content,
            message.name,
            message.tool_call_id,
            message.tool_calls,
        )
    return count_message(message, model).tokens


def truncate_text(text: str, max_tokens: int, model: str | None = None) -> str:
    """``text`` cut to about ``max_tokens`` tokens, head and tail kept, with a visible marker."""
    encoding = get_encoding(encoding_name_for(model)[0])
    ids = encoding.encode(text, disallowed_special=())
    if len(ids) <= max_tokens:
        return text
    room = max(max_tokens - 12, 2)  # the marker and its line breaks take about 12 tokens
    head, tail = (room * 2) // 3, room - (room * 2) // 3
    marker = TRUNCATION_MARKER.format(n=len(ids) - head - tail)
    return (
        f"{encoding.decode(ids[:head])}\n{marker}\n{encoding.decode(ids[-tail:]) if tail else ''}"
    )


def _shrink_args(args: str, keep: int, model: str | None) -> str:
    """Tool-call arguments cut to about ``keep`` tokens by shortening their longest strings,
    so they stay valid JSON."""
    try:
        value = json.loads(args)
    except ValueError:
        return truncate_text(args, keep, model)
    leaves: list[tuple[Any, Any]] = []

    def collect(node: Any) -> None:
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, child in items:
            if isinstance(child, str):
                leaves.append((node, key))
            else:
                collect(child)

    collect(value)
    encoding = get_encoding(encoding_name_for(model)[0])
    changed = False
    for _ in range(len(leaves) * 2):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        excess = len(encoding.encode(text, disallowed_special=())) - keep
        if excess <= 0 or not leaves:
            break
        node, key = max(leaves, key=lambda nk: len(nk[0][nk[1]]))
        size = len(encoding.encode(node[key], disallowed_special=()))
        if size <= MIN_TRUNCATED_TOKENS:
            break
        node[key] = truncate_text(node[key], max(size - excess, MIN_TRUNCATED_TOKENS), model)
        changed = True
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if changed else args


def truncate_message(message: Message, limit: int, model: str | None) -> Message:
    """A copy of ``message`` that fits about ``limit`` tokens, marked where it was cut.

    Text and tool-call arguments give up tokens in proportion to their size; arguments stay
    valid JSON. Non-text blocks (images, files) are kept whole.
    """
    bare = replace(
        message, content="", tool_calls=tuple(replace(c, args="{}") for c in message.tool_calls)
    )
    room = max(limit - message_tokens(bare, model), MIN_TRUNCATED_TOKENS)
    text_size = count_text(message.text, model)
    arg_sizes = [count_text(c.args, model) for c in message.tool_calls]
    total = max(text_size + sum(arg_sizes), 1)
    calls = tuple(
        replace(
            c, args=_shrink_args(c.args, max(room * size // total, MIN_TRUNCATED_TOKENS), model)
        )
        if size > room * size // total
        else c
        for c, size in zip(message.tool_calls, arg_sizes, strict=True)
    )
    keep = max(room * text_size // total, MIN_TRUNCATED_TOKENS)
    if isinstance(message.content, str):
        content: str | tuple[Mapping[str, Any], ...] = truncate_text(message.content, keep, model)
    else:
        blocks = list(message.content)
        text_idx = [
            i
            for i, b in enumerate(blocks)
            if b.get("type", "text") in ("text", "input_text", "output_text")
        ]
        sizes = {i: max(1, count_text(str(blocks[i].get("text", "")), model)) for i in text_idx}
        all_text = sum(sizes.values()) or 1
        for i in text_idx:
            share = max(MIN_TRUNCATED_TOKENS, keep * sizes[i] // all_text)
            blocks[i] = {
                **blocks[i],
                "text": truncate_text(str(blocks[i].get("text", "")), share, model),
            }
        content = tuple(blocks)
    return replace(message, content=content, tool_calls=calls)
