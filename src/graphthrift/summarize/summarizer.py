"""Summarizers for history pruning: one protocol, an extractive one and a chat-model one.

The summarize package split this module by idea: ``base`` (the ``Summarizer`` protocol),
``transcript``, ``extractive`` (with ``facts``, ``fields`` and ``features``) and
``chat_model``. Its public names stay importable from here.
"""

from __future__ import annotations

from graphthrift.summarize.base import SECTION_NAME, Summarizer, is_compaction
from graphthrift.summarize.chat_model import ChatModelSummarizer
from graphthrift.summarize.extractive import ExtractiveSummarizer
from graphthrift.summarize.transcript import render_transcript

__all__ = [
    "SECTION_NAME",
    "ChatModelSummarizer",
    "ExtractiveSummarizer",
    "Summarizer",
    "is_compaction",
    "render_transcript",
]
