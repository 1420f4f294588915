"""Answers and their checks: ``Answer``, validators (JSON schema, tool arguments, any
function) and ``answer_confidence`` (hedging, empty answers, token log-probabilities)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from graphthrift.errors import MissingExtra
from graphthrift.text.messages import content_text

__all__ = [
    "Answer",
    "JsonSchemaValidator",
    "ToolArgsValidator",
    "Validator",
    "answer_confidence",
    "as_validator",
]


#: Hedging that marks an unsure answer (escalated on low confidence).
_HEDGE = re.compile(
    r"\b(?:i(?:'m| am) not (?:sure|certain)|i don'?t know|i do not know|i cannot|i can'?t "
    r"(?:determine|answer|tell|help)|unable to|not enough information|insufficient "
    r"information|it(?:'s| is) unclear|unclear|no idea|as an ai|i'm unsure|uncertain)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A model's answer, reduced to what validators need."""

    text: str
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, obj: Any) -> Answer:
        """Read a str, an OpenAI-style dict, a LangChain AIMessage or a LlamaIndex response."""
        if isinstance(obj, Answer):
            return obj
        if isinstance(obj, str):
            return cls(obj, source=obj)
        if isinstance(obj, Mapping):
            calls = tuple(obj.get("tool_calls") or ())
            return cls(content_text(obj.get("content", "")), calls, {}, obj)
        result = getattr(obj, "result", None)  # langchain.agents ModelResponse
        if isinstance(result, list) and result:
            return cls.of(result[-1]) if not isinstance(result[-1], str) else cls(result[-1])
        message = getattr(obj, "message", None)  # LlamaIndex ChatResponse
        target = message if message is not None and not hasattr(obj, "content") else obj
        text = content_text(getattr(target, "content", "") or "")
        calls = tuple(getattr(target, "tool_calls", None) or ())
        meta = getattr(target, "response_metadata", None) or {}
        return cls(text, calls, meta, obj)


class Validator(Protocol):
    """Checks an answer; returns why it fails, or None when it passes."""

    def __call__(self, answer: Answer) -> str | None: ...


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema ships with langchain
        raise MissingExtra(None, "jsonschema") from exc
    return jsonschema


class JsonSchemaValidator:
    """The answer's text must be JSON valid under ``schema`` (a JSON Schema dict)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        js = _jsonschema()
        cls = js.validators.validator_for(schema)
        cls.check_schema(schema)
        self._validator = cls(schema)

    def __call__(self, answer: Answer) -> str | None:
        text = answer.text.strip()
        if text.startswith("```"):
            text = text.strip("`").removeprefix("json").strip()
        try:
            data = json.loads(text)
        except ValueError as exc:
            return f"not JSON: {exc}"
        error = next(iter(self._validator.iter_errors(data)), None)
        return None if error is None else f"schema: {error.message}"


class ToolArgsValidator:
    """Every tool call must name a known tool and carry arguments valid for its schema.

    Args:
        tools: tool name -> JSON Schema of its arguments (LangChain: ``tool.args_schema``'s
            ``model_json_schema()``, or ``convert_to_openai_tool(t)["function"]["parameters"]``).
        require_call: fail answers that make no tool call at all.
    """

    def __init__(
        self, tools: Mapping[str, Mapping[str, Any]], *, require_call: bool = False
    ) -> None:
        js = _jsonschema()
        self._validators = {}
        for name, schema in tools.items():
            cls = js.validators.validator_for(schema)
            cls.check_schema(schema)
            self._validators[name] = cls(schema)
        self.require_call = require_call

    def __call__(self, answer: Answer) -> str | None:
        if self.require_call and not answer.tool_calls:
            return "no tool call"
        for call in answer.tool_calls:
            name = call.get("name") or (call.get("function") or {}).get("name")
            args: Any = call.get("args")
            if args is None:
                args = (call.get("function") or {}).get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}")
                except ValueError:
                    return f"tool {name!r}: arguments are not JSON"
            validator = self._validators.get(str(name))
            if validator is None:
                return f"unknown tool {name!r}"
            error = next(iter(validator.iter_errors(args)), None)
            if error is not None:
                return f"tool {name!r}: {error.message}"
        return None


def as_validator(fn: Callable[[Answer], Any]) -> Validator:
    if isinstance(fn, JsonSchemaValidator | ToolArgsValidator):
        return fn

    def check(answer: Answer) -> str | None:
        verdict = fn(answer)
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return f"rejected by {getattr(fn, '__name__', 'validator')}"
        return str(verdict)

    return check


def answer_confidence(answer: Answer) -> float:
    """How sure the answer looks, in [0, 1]: 0 for empty or hedging text, else from
    mean token log-probability when the provider sent them, else 1."""
    if not answer.text.strip() and not answer.tool_calls:
        return 0.0
    if answer.text and _HEDGE.search(answer.text):
        return 0.2
    logprobs = answer.metadata.get("logprobs") if answer.metadata else None
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if isinstance(content, list) and content:
        values = [t.get("logprob") for t in content if isinstance(t, Mapping)]
        numbers = [v for v in values if isinstance(v, int | float)]
        if numbers:
            return float(math.exp(sum(numbers) / len(numbers)))
    return 1.0
