"""What a compression returns, and the protocol every compressor follows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["CompressionResult", "Compressor"]


@dataclass(frozen=True, slots=True)
class CompressionResult:
    """What a compressor kept, chunk by chunk, and what it saved.

    Attributes:
        texts: the kept text of each input chunk, in input order; ``""`` when the chunk was
            dropped entirely.
        original_tokens: tokens of all input chunks (each counted on its own).
        kept_tokens: tokens of all non-empty ``texts``; never more than ``budget``.
        budget: the token budget the compressor worked to.
        chunk_original_tokens / chunk_kept_tokens: the same counts per chunk.
        kept_sentences: per chunk, the indices (into ``split_sentences`` of that chunk)
            of the kept sentences; empty for backends that do not select sentences.
        compressor: the backend's name, e.g. ``"extractive"``.
        model: the model whose tokenizer counted the tokens, if given.
        elapsed_ms: wall time of the compression.
        details: backend specifics (e.g. whether the embedder was used).
    """

    texts: tuple[str, ...]
    original_tokens: int
    kept_tokens: int
    budget: int
    chunk_original_tokens: tuple[int, ...] = ()
    chunk_kept_tokens: tuple[int, ...] = ()
    kept_sentences: tuple[tuple[int, ...], ...] = ()
    compressor: str = "extractive"
    model: str | None = None
    elapsed_ms: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> tuple[int, ...]:
        """Indices of the input chunks that kept any text, in input order."""
        return tuple(i for i, t in enumerate(self.texts) if t)

    @property
    def removed_tokens(self) -> int:
        """Tokens the compression saved: ``original_tokens - kept_tokens``."""
        return max(self.original_tokens - self.kept_tokens, 0)

    @property
    def ratio(self) -> float:
        """Compression ratio, original ÷ kept (3.0 means a third was kept).

        1.0 for empty input, ``math.inf`` when everything was dropped.
        """
        if self.kept_tokens:
            return self.original_tokens / self.kept_tokens
        return 1.0 if self.original_tokens == 0 else math.inf

    @property
    def kept_fraction(self) -> float:
        """kept ÷ original, the quantity ``target_ratio`` sets (1.0 for empty input)."""
        return self.kept_tokens / self.original_tokens if self.original_tokens else 1.0

    def text(self, separator: str = "\n\n") -> str:
        """The kept chunks joined into one context string."""
        return separator.join(t for t in self.texts if t)


@runtime_checkable
class Compressor(Protocol):
    """Anything that shortens retrieved chunks for a question, within a token budget.

    ``ledger`` and ``tags`` let an adapter route the saving to the cost ledger with the
    caller's tags (tenant_id, node, thread_id, ...); ``max_tokens`` / ``target_ratio``
    override the compressor's own budget for one call.
    """

    name: str

    def compress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult: ...

    async def acompress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult: ...
