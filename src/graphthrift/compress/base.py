"""``BaseCompressor``: budget handling, validation and ledger writes every backend shares."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from graphthrift.compress.budget import (
    DEFAULT_TARGET_RATIO,
    check_chunks,
    check_max_tokens,
    check_target_ratio,
    env_target,
)
from graphthrift.compress.result import CompressionResult
from graphthrift.compress.savings import compression_record, write_saving

__all__ = ["BaseCompressor"]


class BaseCompressor:
    """Budget handling, validation and ledger writes shared by every backend.

    Subclasses implement ``_run`` (sync) and ``_arun`` (async) on validated input.
    """

    name = "base"

    def __init__(
        self,
        *,
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        target_ratio = check_target_ratio(target_ratio)
        max_tokens = check_max_tokens(max_tokens)
        if target_ratio is None and max_tokens is None:
            target_ratio = check_target_ratio(
                env_target("GRAPHTHRIFT_COMPRESS_TARGET_RATIO", float)
            )
            max_tokens = check_max_tokens(env_target("GRAPHTHRIFT_COMPRESS_MAX_TOKENS", int))
        if target_ratio is None and max_tokens is None:
            target_ratio = DEFAULT_TARGET_RATIO
        self.target_ratio = target_ratio
        self.max_tokens = max_tokens
        self.model = model
        self.ledger = ledger
        self.tags = dict(tags or {})

    # Public API: one implementation, two entry points.

    def compress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult:
        """Keep what answers ``question`` from ``chunks``, within the budget.

        Args:
            question: the user's question ("" compresses without a query).
            chunks: the retrieved texts, best first if the retriever ranks them.
            max_tokens / target_ratio: override the budget for this call (target_ratio is
                the kept fraction, in (0, 1]).
            ledger: write the saving to this ledger instead of the compressor's own.
            tags: ledger tags for this call, merged over the compressor's ``tags``.

        Returns:
            A ``CompressionResult`` aligned with ``chunks``.
        """
        items, ratio, cap = self._prepare(question, chunks, target_ratio, max_tokens)
        start = time.perf_counter()
        result = self._run(question, items, ratio, cap)
        return self._finish(result, start, ledger, tags)

    async def acompress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult:
        """``compress`` for async code: the embedder is awaited, the rest is the same."""
        items, ratio, cap = self._prepare(question, chunks, target_ratio, max_tokens)
        start = time.perf_counter()
        result = await self._arun(question, items, ratio, cap)
        return self._finish(result, start, ledger, tags)

    def _prepare(
        self,
        question: str,
        chunks: Sequence[str],
        target_ratio: float | None,
        max_tokens: int | None,
    ) -> tuple[list[str], float | None, int | None]:
        items = check_chunks(question, chunks)
        ratio = check_target_ratio(target_ratio)
        cap = check_max_tokens(max_tokens)
        if ratio is None and cap is None:
            ratio, cap = self.target_ratio, self.max_tokens
        return items, ratio, cap

    def _finish(
        self,
        result: CompressionResult,
        start: float,
        ledger: Any,
        tags: Mapping[str, Any] | None,
    ) -> CompressionResult:
        result = replace(result, elapsed_ms=(time.perf_counter() - start) * 1000)
        target = ledger if ledger is not None else self.ledger
        if target is not None:
            record = compression_record(
                result, model=self.model, tags={**self.tags, **(tags or {})}
            )
            write_saving(target, record)
        return result

    def _run(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        raise NotImplementedError

    async def _arun(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        raise NotImplementedError
