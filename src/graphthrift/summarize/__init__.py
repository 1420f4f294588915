"""Summarizers that fold old turns: extractive by default, or a chat model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "ChatModelSummarizer": ".chat_model",
    "ExtractiveSummarizer": ".extractive",
    "SECTION_NAME": ".base",
    "Summarizer": ".base",
    "is_compaction": ".base",
    "render_transcript": ".transcript",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .base import SECTION_NAME as SECTION_NAME
    from .base import Summarizer as Summarizer
    from .base import is_compaction as is_compaction
    from .chat_model import ChatModelSummarizer as ChatModelSummarizer
    from .extractive import ExtractiveSummarizer as ExtractiveSummarizer
    from .transcript import render_transcript as render_transcript
