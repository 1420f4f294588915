"""Which answers may be cached: graphthrift's own messages, errors and refusals never are.

A budget's "I have to stop here" message, an answer degraded by a budget rung, a cache
hit, a provider error, a content-filter stop or a refusal is not an answer to the user's
question: stored, it would be served again long after the cause went away (issue 11,
item 2). Every graphthrift component that fabricates or degrades a message marks it with
``OWN_MESSAGE_KEY`` in its ``response_metadata`` (LangChain) or ``metadata`` (LlamaIndex);
every cache store path asks ``unstorable(message)`` first.

Framework-free: messages are read by duck typing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "OWN_MESSAGE_KEY",
    "degraded_call",
    "fabricated",
    "note_degraded",
    "own_marker",
    "unstorable",
    "watch_degraded",
]

#: ``response_metadata`` key set on every message graphthrift produced itself; its value
#: says what produced it (``"budget"``, ``"budget_degraded"``, ``"cache"``, ...).
OWN_MESSAGE_KEY = "graphthrift_own"
#: Older markers that also mean "graphthrift wrote this" (budget and cache adapters).
_LEGACY_KEYS = ("graphthrift_budget", "graphthrift_cache")
_BAD_FINISH = frozenset(
    {
        "content_filter",
        "refusal",
        "error",
        "safety",
        "blocklist",
        "prohibited_content",
        "spii",
        # cut off at the output cap (a budget's reservation, say): served again after the
        # cap is raised it would be a truncated answer
        "length",
        "max_tokens",
        "model_context_window_exceeded",
    }
)


# A budget that degrades a call (cheaper model, compressed or summarized prompt) may sit
# outside a cache (middleware order) or below it (an LLM inside a cached query engine); the
# message it returns is marked only after the cache has seen it. These context variables
# carry the fact to the cache's store path in both cases.
_DEGRADED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "graphthrift_degraded_call", default=None
)
_WATCHERS: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar(
    "graphthrift_degraded_watchers", default=()
)


@contextmanager
def degraded_call(kind: str = "budget_degraded") -> Iterator[None]:
    """Run a degraded call: any answer stored while it runs is refused (``unstorable``), and
    any ``watch_degraded`` block around it sees ``kind``."""
    note_degraded(kind)
    token = _DEGRADED.set(kind)
    try:
        yield
    finally:
        _DEGRADED.reset(token)


def note_degraded(kind: str = "budget_degraded") -> None:
    """Tell every enclosing ``watch_degraded`` block that a call in it was degraded."""
    for seen in _WATCHERS.get():
        seen.append(kind)


@contextmanager
def watch_degraded() -> Iterator[list[str]]:
    """Collect the kinds of degraded calls made inside the block (a cached query engine
    stores its answer only when the list stays empty)."""
    seen: list[str] = []
    token = _WATCHERS.set((*_WATCHERS.get(), seen))
    try:
        yield seen
    finally:
        _WATCHERS.reset(token)


def own_marker(kind: str) -> dict[str, str]:
    """The metadata entry a graphthrift component adds to a message it produced."""
    return {OWN_MESSAGE_KEY: kind}


def _meta(message: Any, name: str) -> Mapping[str, Any]:
    value = message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)
    return value if isinstance(value, Mapping) else {}


#: Marker kinds of messages that no model call produced (a cache hit, a budget stop).
_NO_CALL = frozenset({"cache", "budget"})


def fabricated(message: Any) -> bool:
    """True when no model call produced ``message``: graphthrift served it from a cache or
    wrote it in place of a call (a budget stop). A budget rung's *degraded* answer is a real
    call and is not fabricated: a budget must still charge it."""
    if message is None:
        return False
    for name in ("response_metadata", "metadata"):
        meta = _meta(message, name)
        if meta.get(OWN_MESSAGE_KEY) in _NO_CALL:
            return True
        if any(meta.get(key) for key in _LEGACY_KEYS):
            return True
    return False


def unstorable(message: Any) -> str | None:
    """Why ``message`` must not be cached, or None when it is an ordinary model answer.

    Reasons: ``own:<kind>`` (graphthrift wrote or degraded it), ``refusal``,
    ``finish:<reason>`` (content filter, safety stop, error), ``error`` (an error status),
    ``invalid_tool_calls`` (the provider's tool call could not be parsed).
    """
    degraded = _DEGRADED.get()
    if degraded:
        return f"own:{degraded}"
    if message is None:
        return None
    metas = [_meta(message, n) for n in ("response_metadata", "metadata", "additional_kwargs")]
    for meta in metas:
        kind = meta.get(OWN_MESSAGE_KEY)
        if kind:
            return f"own:{kind}"
        for key in _LEGACY_KEYS:
            if meta.get(key):
                return f"own:{key.removeprefix('graphthrift_')}"
    for meta in metas:
        if meta.get("refusal"):
            return "refusal"
        for key in ("finish_reason", "stop_reason", "done_reason"):
            reason = meta.get(key)
            if isinstance(reason, str) and reason.lower() in _BAD_FINISH:
                return f"finish:{reason.lower()}"
    if getattr(message, "status", None) == "error":
        return "error"
    if getattr(message, "invalid_tool_calls", None):
        return "invalid_tool_calls"
    return None
