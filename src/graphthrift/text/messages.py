"""A framework-free view of chat messages.

The core never imports LangChain or LlamaIndex, yet it must count, prune and key their
messages. ``to_message`` reads any of them by duck typing (LangChain ``BaseMessage``,
LlamaIndex ``ChatMessage``, OpenAI-style dicts) into one small immutable ``Message``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

_ROLE_ALIASES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call requested by an assistant message."""

    id: str | None
    name: str
    args: str  # JSON text of the arguments, as a provider would bill it


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message, reduced to what pricing, pruning and caching need."""

    role: Role
    content: str | tuple[Mapping[str, Any], ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    id: str | None = None
    source: Any = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        """The message's text, with non-text content blocks left out."""
        return content_text(self.content)

    @property
    def has_non_text(self) -> bool:
        """Whether the content holds blocks (images, audio, files) that are not text."""
        if isinstance(self.content, str):
            return False
        return any(_block_kind(b) not in ("text", "") for b in self.content)


def _block_kind(block: Mapping[str, Any] | str) -> str:
    if isinstance(block, str):
        return "text"
    kind = block.get("type", "")
    return "text" if kind in ("text", "input_text", "output_text") else str(kind)


def content_text(content: Any) -> str:
    """Concatenate the text of a string, a list of content blocks, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping):
            if _block_kind(block) == "text":
                parts.append(str(block.get("text", "")))
        else:
            text = getattr(block, "text", None)  # LlamaIndex TextBlock
            if isinstance(text, str):
                parts.append(text)
    return "\n".join(p for p in parts if p)


def _normalise_content(content: Any) -> str | tuple[Mapping[str, Any], ...]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        blocks: list[Mapping[str, Any]] = []
        for block in content:
            if isinstance(block, str):
                blocks.append({"type": "text", "text": block})
            elif isinstance(block, Mapping):
                blocks.append(block)
            else:  # LlamaIndex blocks are pydantic models with a block_type
                kind = getattr(block, "block_type", type(block).__name__.lower())
                text = getattr(block, "text", None)
                blocks.append({"type": kind, "text": text} if text else {"type": kind})
        return tuple(blocks)
    raise TypeError(f"message content must be a string or a list of blocks, got {type(content)!r}")


def _args_text(args: Any) -> str:
    if isinstance(args, str):
        return args
    return json.dumps(args, separators=(",", ":"), ensure_ascii=False, default=str)


def _tool_call(raw: Any) -> ToolCall:
    if isinstance(raw, Mapping):
        function = raw.get("function")
        if isinstance(function, Mapping):  # OpenAI wire format
            return ToolCall(
                raw.get("id"),
                str(function.get("name", "")),
                _args_text(function.get("arguments", "")),
            )
        return ToolCall(raw.get("id"), str(raw.get("name", "")), _args_text(raw.get("args", {})))
    return ToolCall(
        getattr(raw, "id", None),
        str(getattr(raw, "name", "")),
        _args_text(getattr(raw, "args", {})),
    )


def _role(raw: Any, where: object) -> Role:
    value = getattr(raw, "value", raw)  # LlamaIndex MessageRole is an Enum
    key = str(value).lower()
    if key.endswith("chunk"):  # LangChain AIMessageChunk.type == "AIMessageChunk"
        key = key[: -len("messagechunk")] or key
    role = _ROLE_ALIASES.get(key)
    if role is None:
        raise TypeError(f"unknown message role {value!r} in {where!r}")
    return role


def to_message(obj: Any) -> Message:
    """Read a LangChain, LlamaIndex or OpenAI-style message into a ``Message``.

    Raises:
        TypeError: the object is not a message of a known shape; the error names its type.
    """
    if isinstance(obj, Message):
        return obj
    if isinstance(obj, Mapping):
        role = _role(obj.get("role", obj.get("type", "")), type(obj).__name__)
        calls = tuple(_tool_call(c) for c in obj.get("tool_calls") or ())
        return Message(
            role,
            _normalise_content(obj.get("content")),
            calls,
            obj.get("tool_call_id"),
            obj.get("name"),
            obj.get("id"),
            obj,
        )
    lc_type = getattr(obj, "type", None)
    if isinstance(lc_type, str) and hasattr(obj, "content"):  # LangChain BaseMessage
        raw_role = getattr(obj, "role", lc_type) if lc_type == "chat" else lc_type
        calls = tuple(_tool_call(c) for c in getattr(obj, "tool_calls", None) or ())
        return Message(
            _role(raw_role, type(obj).__name__),
            _normalise_content(obj.content),
            calls,
            getattr(obj, "tool_call_id", None),
            getattr(obj, "name", None),
            getattr(obj, "id", None),
            obj,
        )
    li_role = getattr(obj, "role", None)
    if li_role is not None and hasattr(obj, "blocks"):  # LlamaIndex ChatMessage
        extra = getattr(obj, "additional_kwargs", None) or {}
        calls = tuple(_tool_call(c) for c in extra.get("tool_calls") or ())
        return Message(
            _role(li_role, type(obj).__name__),
            _normalise_content(obj.blocks),
            calls,
            extra.get("tool_call_id"),
            extra.get("name"),
            None,
            obj,
        )
    raise TypeError(
        f"cannot read a chat message from {type(obj).__name__!r}: expected a LangChain "
        "BaseMessage, a LlamaIndex ChatMessage or a dict with 'role' and 'content'"
    )


def to_messages(objs: Iterable[Any]) -> list[Message]:
    """``to_message`` over a sequence; a bare string becomes one user message."""
    if isinstance(objs, str):
        return [Message("user", objs)]
    return [to_message(o) for o in objs]


def message_fields(message: Message) -> dict[str, Any]:
    """``content`` and ``tool_calls`` of ``message`` as plain data, in LangChain's shape.

    Adapters use it to copy a shortened core message back onto their own message object
    (``original.model_copy(update=message_fields(m))``) without each rebuilding the shape.
    """
    content: str | list[Any] = (
        message.content if isinstance(message.content, str) else [dict(b) for b in message.content]
    )
    fields: dict[str, Any] = {"content": content}
    if message.tool_calls:
        fields["tool_calls"] = [
            {
                "name": c.name,
                "args": json.loads(c.args) if c.args else {},
                "id": c.id,
                "type": "tool_call",
            }
            for c in message.tool_calls
        ]
    return fields
