"""Reading logged LLM traffic for ``graphthrift bench --traffic``.

One JSON object a line, either an OpenAI chat-completions request
(``{"model", "messages", ..., "metadata"?: {...}, "response"?: {...}}``) or the same wrapped
as ``{"request": {...}, "response": {...}, "metadata"?: {...}}``. ``metadata`` may carry
``tenant_id``, ``feature`` and ``thread_id``; ``response`` may carry ``usage`` (prompt,
completion, cached and reasoning tokens) and ``choices[0].message.content``. A line that
is not such an object is counted as bad with its reason, never fatal. The format is in
docs/benchmarks.md and the README.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphthrift.bench._data import read_text
from graphthrift.errors import TrafficFileError

__all__ = [
    "BadLine",
    "LoggedRequest",
    "LoggedUsage",
    "TrafficFile",
    "TrafficFileError",
    "parse_line",
    "read_traffic",
]

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass(frozen=True, slots=True)
class LoggedUsage:
    """Token counts as the provider reported them (``response.usage``)."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int | None  # None: not logged (prompt_tokens_details absent)
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One valid line: the request, its tags and what the provider answered (if logged)."""

    line: int
    model: str
    messages: tuple[dict[str, Any], ...]
    tenant_id: str
    feature: str | None
    thread_id: str | None
    usage: LoggedUsage | None
    answer: str | None
    has_tools: bool = False


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that could not be replayed, and why."""

    line: int
    problem: str


@dataclass
class TrafficFile:
    """What a traffic file held: the valid requests in order and the bad lines."""

    path: Path
    requests: list[LoggedRequest] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


def _text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a content list."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise ValueError(f"content must be a string or a list of parts, got {type(content).__name__}")


def _message(raw: Any, k: int) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"messages[{k}] is not an object")
    role = raw.get("role")
    if role not in ROLES:
        raise ValueError(f"messages[{k}].role must be one of {sorted(ROLES)}, got {role!r}")
    text = _text(raw.get("content"))
    calls = raw.get("tool_calls") or ()
    if text is None and not calls:
        raise ValueError(f"messages[{k}] has neither content nor tool_calls")
    message: dict[str, Any] = {
        "role": "system" if role == "developer" else ("tool" if role == "function" else role),
        "content": text or "",
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": str(c.get("id", f"call_{k}_{j}")),
                "type": "function",
                "function": {
                    "name": str((c.get("function") or {}).get("name", "tool")),
                    "arguments": str((c.get("function") or {}).get("arguments", "{}")),
                },
            }
            for j, c in enumerate(calls)
            if isinstance(c, Mapping)
        ]
    if message["role"] == "tool":
        message["tool_call_id"] = str(raw.get("tool_call_id") or raw.get("name") or f"call_{k}")
    return message


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"response.usage.{name} must be a non-negative integer, got {value!r}")
    return value


def _usage(response: Any) -> tuple[LoggedUsage | None, str | None]:
    if response is None:
        return None, None
    if not isinstance(response, Mapping):
        raise ValueError("response is not an object")
    answer = None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping):
            answer = _text(message.get("content"))
    usage = response.get("usage")
    if usage is None:
        return None, answer
    if not isinstance(usage, Mapping):
        raise ValueError("response.usage is not an object")
    prompt = _count(usage.get("prompt_tokens"), "prompt_tokens")
    completion = _count(usage.get("completion_tokens", 0), "completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = None
    if isinstance(details, Mapping) and details.get("cached_tokens") is not None:
        cached = min(
            _count(details["cached_tokens"], "prompt_tokens_details.cached_tokens"), prompt
        )
    out_details = usage.get("completion_tokens_details")
    reasoning = 0
    if isinstance(out_details, Mapping) and out_details.get("reasoning_tokens") is not None:
        reasoning = _count(
            out_details["reasoning_tokens"], "completion_tokens_details.reasoning_tokens"
        )
    return LoggedUsage(prompt, completion, cached, reasoning), answer


def _tag(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return None if value is None or value == "" else str(value)


def parse_line(number: int, line: str) -> LoggedRequest:
    """One line as a ``LoggedRequest``; raises ValueError naming what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    request, response = obj, obj.get("response")
    if "request" in obj:
        request = obj["request"]
        if not isinstance(request, Mapping):
            raise ValueError("request is not an object")
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("no model (a non-empty string)")
    raw_messages = request.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ValueError("no messages (a non-empty list)")
    messages = tuple(_message(m, k) for k, m in enumerate(raw_messages))
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("no user message")
    metadata: dict[str, Any] = {}
    for source in (obj.get("metadata"), request.get("metadata")):
        if isinstance(source, Mapping):
            metadata.update(source)
        elif source is not None:
            raise ValueError("metadata is not an object")
    usage, answer = _usage(response)
    return LoggedRequest(
        line=number,
        model=model.strip(),
        messages=messages,
        tenant_id=_tag(metadata, "tenant_id") or "default",
        feature=_tag(metadata, "feature"),
        thread_id=_tag(metadata, "thread_id"),
        usage=usage,
        answer=answer,
        has_tools=bool(request.get("tools")),
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            yield number, line


def read_traffic(path: str | Path) -> TrafficFile:
    """Every line of ``path`` (JSONL, gzip or not): valid requests, and bad lines with why.

    Raises:
        TrafficFileError: there is no such file, or it is a damaged gzip or not UTF-8.
    """
    target = Path(path)
    if not target.is_file():
        raise TrafficFileError(target, "no such file")
    out = TrafficFile(target)
    try:
        lines = list(_lines(target))
    except ValueError as exc:  # DataFileError: truncated gzip, not UTF-8
        raise TrafficFileError(target, str(exc)) from None
    for number, line in lines:
        try:
            out.requests.append(parse_line(number, line))
        except ValueError as exc:
            out.bad.append(BadLine(number, str(exc)))
    return out
