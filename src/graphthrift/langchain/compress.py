"""LangChain ``BaseDocumentCompressor``s over graphthrift's compressors.

Use them wherever LangChain takes a document compressor, e.g.
``ContextualCompressionRetriever`` (in ``langchain_classic.retrievers`` since LangChain
1.0). Each document keeps its own metadata and id; documents with nothing relevant are
dropped. The saving goes to the ledger, tagged with the run's metadata (tenant_id,
feature, ...) that LangChain passes down in the callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from graphthrift.compress.compressor import build_compressor
from graphthrift.compress.result import CompressionResult, Compressor
from graphthrift.kernel import run_tags
from graphthrift.ledger.records import TAG_FIELDS

__all__ = ["CompressorDocumentCompressor", "ExtractiveDocumentCompressor", "callback_tags"]


def callback_tags(callbacks: Callbacks | None) -> dict[str, Any]:
    """Ledger tags from the callback manager LangChain hands a compressor (its metadata),
    read by ``graphthrift.kernel.run_tags`` alone."""
    metadata: Mapping[str, Any] = {}
    if callbacks is not None and not isinstance(callbacks, list):
        metadata = (
            getattr(callbacks, "inheritable_metadata", None)
            or getattr(callbacks, "metadata", None)
            or {}
        )
    return {k: v for k, v in run_tags({"metadata": metadata}).items() if k in TAG_FIELDS}


def _kept(documents: Sequence[Document], result: CompressionResult) -> list[Document]:
    return [
        doc.model_copy(update={"page_content": text})
        for doc, text in zip(documents, result.texts, strict=True)
        if text
    ]


class CompressorDocumentCompressor(BaseDocumentCompressor):
    """Wraps any graphthrift ``Compressor`` as a LangChain document compressor.

    Attributes:
        compressor: the ``Compressor`` (``ExtractiveCompressor``, ``LLMLinguaCompressor``...).
        ledger: where savings are recorded (default: the compressor's own ledger, if any).
        tags: fixed ledger tags; the run's metadata tags are added per call.

    Example:
        >>> from graphthrift.compress import ExtractiveCompressor
        >>> dc = CompressorDocumentCompressor(compressor=ExtractiveCompressor(max_tokens=200))
        >>> dc.compress_documents([], "question")
        []
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    compressor: Any
    ledger: Any = None
    tags: dict[str, Any] = Field(default_factory=dict)

    def _tags(self, callbacks: Callbacks | None) -> dict[str, Any]:
        return {**self.tags, **callback_tags(callbacks)}

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The documents cut down to what answers ``query``, in their original order."""
        docs = list(documents)
        if not docs:
            return []
        core: Compressor = self.compressor
        result = core.compress(
            query, [d.page_content for d in docs], ledger=self.ledger, tags=self._tags(callbacks)
        )
        return _kept(docs, result)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """``compress_documents`` for async chains (the compressor's own async path)."""
        docs = list(documents)
        if not docs:
            return []
        core: Compressor = self.compressor
        result = await core.acompress(
            query, [d.page_content for d in docs], ledger=self.ledger, tags=self._tags(callbacks)
        )
        return _kept(docs, result)


class ExtractiveDocumentCompressor(CompressorDocumentCompressor):
    """The default ``ExtractiveCompressor`` as a LangChain document compressor.

    Args:
        target_ratio: kept fraction in (0, 1] (kept tokens / original tokens).
        max_tokens: absolute budget in tokens for all documents together.
        model: the downstream model (counts tokens, prices the saving).
        embedder: ``None`` (MiniLM when lexical evidence is weak), ``False`` (lexical
            only), or any embedder ``graphthrift.embed.embedders.as_embedder`` accepts.
        scope: ``"global"`` (drop irrelevant documents) or ``"chunk"`` (trim each).
        ledger / tags: as in ``CompressorDocumentCompressor``.

    Example:
        >>> dc = ExtractiveDocumentCompressor(target_ratio=0.5, embedder=False)
        >>> [d.page_content for d in dc.compress_documents(
        ...     [Document("Paris is in France. Rome is in Italy.")], "Where is Rome?")]
        ['Rome is in Italy.']
    """

    def __init__(
        self,
        *,
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        embedder: Any = None,
        scope: Literal["global", "chunk"] = "global",
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        compressor = build_compressor(
            "ExtractiveDocumentCompressor",
            kwargs.pop("compressor", None),
            target_ratio=target_ratio,
            max_tokens=max_tokens,
            model=model,
            embedder=embedder,
            scope=None if scope == "global" else scope,  # the default is not a setting
        )
        super().__init__(compressor=compressor, ledger=ledger, tags=dict(tags or {}), **kwargs)
