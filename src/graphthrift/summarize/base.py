"""The ``Summarizer`` protocol: the seam between the history pruner and who writes its summary.

Contract: ``summarize(messages, previous_summary, max_tokens)`` returns a *new section*
covering ``messages`` only (``previous_summary`` is context, not to be repeated), in at
most ``max_tokens`` tokens. When every message is a summary section (role ``system``,
name ``SECTION_NAME``) the pruner is asking for a compaction: rewrite those sections into
one shorter summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from graphthrift.errors import ConfigError
from graphthrift.text.messages import Message

__all__ = ["SECTION_NAME", "Summarizer", "check_summary_args", "is_compaction"]

SECTION_NAME = "graphthrift_summary_section"


@runtime_checkable
class Summarizer(Protocol):
    """Writes the section of the running summary that covers ``messages``."""

    def summarize(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> str: ...

    async def asummarize(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> str: ...


def is_compaction(messages: Sequence[Message]) -> bool:
    """Whether the pruner is asking to compact the summary rather than to fold turns."""
    return bool(messages) and all(m.role == "system" and m.name == SECTION_NAME for m in messages)


def check_summary_args(previous_summary: object, max_tokens: object) -> None:
    """Refuse what a summarizer cannot use, by name: ``previous_summary`` is a str ('' when
    there is none) and ``max_tokens`` an int."""
    if not isinstance(previous_summary, str):
        raise ConfigError(
            "previous_summary",
            type(previous_summary).__name__,
            "must be a str ('' when there is no summary yet)",
        )
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ConfigError("max_tokens", max_tokens, "must be an int (tokens)")
