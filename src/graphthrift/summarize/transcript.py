"""How a summarizer reads messages: ``Role: text`` lines, speaker labels, tool calls."""

from __future__ import annotations

from collections.abc import Sequence

from graphthrift.text.messages import Message

__all__ = [
    "LABELS",
    "ROLE_LABEL",
    "label_of",
    "render_transcript",
    "summary_lines",
    "tool_call_text",
]

ROLE_LABEL = {"user": "User", "assistant": "Assistant", "tool": "Tool", "system": "System"}
LABELS = frozenset(ROLE_LABEL.values())


def tool_call_text(message: Message, limit: int = 200) -> str:
    calls = []
    for call in message.tool_calls:
        args = call.args if len(call.args) <= limit else call.args[:limit] + "…"
        calls.append(f"{call.name}({args})")
    return "called " + ", ".join(calls) if calls else ""


def render_transcript(messages: Sequence[Message]) -> str:
    """Messages as ``Role: text`` lines, tool calls included, for a summarizer prompt."""
    lines = []
    for m in messages:
        label = label_of(m)
        text = " ".join(p for p in (m.text.strip(), tool_call_text(m)) if p)
        if text:
            lines.append(f"{label}: {text}")
    return "\n".join(lines)


def label_of(m: Message) -> str:
    """How a summary line names the speaker: "User", "Assistant", "Tool search", ..."""
    return ROLE_LABEL[m.role] + (f" {m.name}" if m.role == "tool" and m.name else "")


def summary_lines(text: str) -> list[tuple[str, str]]:
    """A summary's lines as (speaker label, body); a line without a known label has ""."""
    out = []
    for line in text.splitlines():
        label, sep, body = line.partition(": ")
        if not sep or not (label in LABELS or label.startswith("Tool ")):
            label, body = "", line
        out.append((label, body))
    return out
