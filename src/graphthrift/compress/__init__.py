"""Query-aware compression of retrieved chunks, ours or LLMLingua's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "BaseCompressor": ".base",
    "CompressionResult": ".result",
    "Compressor": ".result",
    "ExtractiveCompressor": ".compressor",
    "InvalidCompressionTarget": "graphthrift.errors",
    "LLMLinguaCompressor": ".lingua",
    "LinguaModelError": "graphthrift.errors",
    "book_savings": ".savings",
    "build_compressor": ".compressor",
    "compression_record": ".savings",
    "defer_saving": ".savings",
    "drop_savings": ".savings",
    "flush_savings": ".savings",
    "normalise_answer_text": ".compressor",
    "resolve_budget": ".budget",
    "split_sentences": "graphthrift.text.sentences",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from graphthrift.errors import InvalidCompressionTarget as InvalidCompressionTarget
    from graphthrift.errors import LinguaModelError as LinguaModelError
    from graphthrift.text.sentences import split_sentences as split_sentences

    from .base import BaseCompressor as BaseCompressor
    from .budget import resolve_budget as resolve_budget
    from .compressor import ExtractiveCompressor as ExtractiveCompressor
    from .compressor import build_compressor as build_compressor
    from .compressor import normalise_answer_text as normalise_answer_text
    from .lingua import LLMLinguaCompressor as LLMLinguaCompressor
    from .result import CompressionResult as CompressionResult
    from .result import Compressor as Compressor
    from .savings import book_savings as book_savings
    from .savings import compression_record as compression_record
    from .savings import defer_saving as defer_saving
    from .savings import drop_savings as drop_savings
    from .savings import flush_savings as flush_savings
