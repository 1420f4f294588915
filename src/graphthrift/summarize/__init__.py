"""Summarizers that fold old turns: extractive by default, or a chat model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "ChatModelSummarizer": ".summarizer",
    "ExtractiveSummarizer": ".summarizer",
    "SECTION_NAME": ".summarizer",
    "Summarizer": ".summarizer",
    "is_compaction": ".summarizer",
    "render_transcript": ".summarizer",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .summarizer import SECTION_NAME as SECTION_NAME
    from .summarizer import ChatModelSummarizer as ChatModelSummarizer
    from .summarizer import ExtractiveSummarizer as ExtractiveSummarizer
    from .summarizer import Summarizer as Summarizer
    from .summarizer import is_compaction as is_compaction
    from .summarizer import render_transcript as render_transcript
