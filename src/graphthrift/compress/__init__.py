"""Query-aware compression of retrieved chunks, ours or LLMLingua's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "BaseCompressor": ".compressor",
    "CompressionResult": ".compressor",
    "Compressor": ".compressor",
    "ExtractiveCompressor": ".compressor",
    "InvalidCompressionTarget": ".compressor",
    "LLMLinguaCompressor": ".lingua",
    "LinguaModelError": ".lingua",
    "book_savings": ".compressor",
    "compression_record": ".compressor",
    "defer_saving": ".compressor",
    "drop_savings": ".compressor",
    "flush_savings": ".compressor",
    "normalise_answer_text": ".compressor",
    "resolve_budget": ".compressor",
    "split_sentences": ".compressor",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .compressor import BaseCompressor as BaseCompressor
    from .compressor import CompressionResult as CompressionResult
    from .compressor import Compressor as Compressor
    from .compressor import ExtractiveCompressor as ExtractiveCompressor
    from .compressor import InvalidCompressionTarget as InvalidCompressionTarget
    from .compressor import book_savings as book_savings
    from .compressor import compression_record as compression_record
    from .compressor import defer_saving as defer_saving
    from .compressor import drop_savings as drop_savings
    from .compressor import flush_savings as flush_savings
    from .compressor import normalise_answer_text as normalise_answer_text
    from .compressor import resolve_budget as resolve_budget
    from .compressor import split_sentences as split_sentences
    from .lingua import LinguaModelError as LinguaModelError
    from .lingua import LLMLinguaCompressor as LLMLinguaCompressor
