"""What the pruner keeps between calls (``HistoryState``) and what one call returns (``PruneResult``).

``HistoryState`` is the sticky boundary and the running summary: a small JSON-serialisable
dataclass that adapters keep in LangGraph state, agent state or a LlamaIndex memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from graphthrift.errors import HistoryStateError
from graphthrift.text.messages import Message

__all__ = ["RECALL_ID", "SUMMARY_ID", "HistoryState", "PruneResult"]

SUMMARY_ID = "graphthrift-history-summary"
#: Id of the message carrying recalled folded turns. It starts with ``SUMMARY_ID``, so a
#: render that found its way back into a thread is dropped as stale, never sent twice.
RECALL_ID = SUMMARY_ID + "-recall"
_O = TypeVar("_O")


@dataclass(slots=True)
class HistoryState:
    """Where the sticky boundary sits and what the running summary says.

    Attributes:
        sections: the summary, one appended section per fold (one after a compaction).
        folded: how many messages of the list the pruner sees next (stale summary
            renders excluded) lie behind the boundary.
        folded_through_id: id of the last message behind the boundary, to re-find the
            boundary when the list is not the one expected; None when messages carry no id.
        summarizations: folds so far.
        compactions: summary compactions so far.
        folded_total: messages ever folded, also across destructive rewrites.
        held: positions behind the boundary still sent verbatim after the summary: the
            human turn that was the latest at the last fold. They stay until the next fold
            even once a newer turn arrives, so the prompt keeps extending the last one.
    """

    sections: list[str] = field(default_factory=list)
    folded: int = 0
    folded_through_id: str | None = None
    summarizations: int = 0
    compactions: int = 0
    folded_total: int = 0
    version: int = 1
    held: list[int] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """The running summary as one text."""
        return "\n".join(s for s in self.sections if s)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, for LangGraph state and checkpointers."""
        return {
            f.name: (
                list(getattr(self, f.name))
                if f.name in ("sections", "held")
                else getattr(self, f.name)
            )
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | HistoryState | None) -> HistoryState:
        """Read a stored state; unknown keys are ignored, wrong types raise HistoryStateError."""
        if data is None:
            return cls()
        if isinstance(data, HistoryState):
            return replace(data, sections=list(data.sections), held=list(data.held))
        if not isinstance(data, Mapping):
            raise HistoryStateError("<state>", data)
        sections = data.get("sections", [])
        if not isinstance(sections, list) or not all(isinstance(s, str) for s in sections):
            raise HistoryStateError("sections", sections)
        out = cls(sections=list(sections))
        for name in ("folded", "summarizations", "compactions", "folded_total", "version"):
            value = data.get(name, getattr(out, name))
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HistoryStateError(name, value)
            setattr(out, name, value)
        through = data.get("folded_through_id")
        if through is not None and not isinstance(through, str):
            raise HistoryStateError("folded_through_id", through)
        out.folded_through_id = through
        held = data.get("held", [])
        if not isinstance(held, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < out.folded for i in held
        ):
            raise HistoryStateError("held", held)
        out.held = sorted(set(held))
        return out

    def rebased(self) -> HistoryState:
        """The state for a list whose folded messages were deleted (destructive mode)."""
        return replace(
            self, sections=list(self.sections), folded=0, folded_through_id=None, held=[]
        )


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What to send, and how it maps back to the input list.

    Attributes:
        messages: the prompt: system messages, the summary (if any), the verbatim window.
        origin: for each prompt message, its index in the input list (None for the summary).
        state: the state to store for the next call.
        folded: input indices folded into the summary by this call.
        hidden: every input index not sent (folded now or before, or a stale summary render).
        truncated: input indices sent with their content shortened (with a marker).
        tokens_in: tokens of the whole input, as if sent unpruned.
        tokens_out: tokens of ``messages``.
        summarized: whether this call folded turns (the prefix changed).
        compacted: whether this call compacted the summary.
        over_budget: the prompt still exceeds ``max_tokens`` after every remedy.
        recalled: the folded turns recalled into the prompt (``RecalledSnippet``s), in one
            message with id ``RECALL_ID`` (origin None) just before the latest human turn.
    """

    messages: list[Message]
    origin: tuple[int | None, ...]
    state: HistoryState
    folded: tuple[int, ...] = ()
    hidden: tuple[int, ...] = ()
    truncated: tuple[int, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    summarized: bool = False
    compacted: bool = False
    over_budget: bool = False
    recalled: tuple[Any, ...] = ()

    @property
    def kept(self) -> tuple[int, ...]:
        """Input indices sent, in prompt order."""
        return tuple(i for i in self.origin if i is not None)

    @property
    def summary(self) -> Message | None:
        """The summary message of the prompt, if there is one."""
        for i, m in zip(self.origin, self.messages, strict=True):
            if i is None and m.id != RECALL_ID:
                return m
        return None

    @property
    def recall_message(self) -> Message | None:
        """The message of recalled folded turns, if there is one."""
        return next((m for m in self.messages if m.id == RECALL_ID), None)

    def materialize(
        self,
        make_summary: Callable[[Message], _O],
        copy_truncated: Callable[[Any, Message], _O],
    ) -> list[_O | Any]:
        """The prompt in the caller's own message types, for adapters.

        Kept messages come back as the very objects passed in (``Message.source``); the
        summary is built by ``make_summary``; a truncated message by
        ``copy_truncated(original, shortened)``.
        """
        truncated = set(self.truncated)
        out: list[_O | Any] = []
        for i, m in zip(self.origin, self.messages, strict=True):
            if i is None:
                out.append(make_summary(m))
            elif m.source is None:
                out.append(m)
            elif i in truncated:
                out.append(copy_truncated(m.source, m))
            else:
                out.append(m.source)
        return out
