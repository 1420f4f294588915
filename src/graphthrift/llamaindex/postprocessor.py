"""``CompressionPostprocessor``: query-aware compression as a LlamaIndex node postprocessor.

LlamaIndex's ``LongLLMLinguaPostprocessor`` merges every node's text into one and copies
all metadata onto every output node. This one compresses node by node: each kept node is
a copy of its input with the same id, metadata, relationships and score, and only its
text shortened. Nodes with nothing relevant are dropped; nodes that are not text (images,
index references, audio, video) pass through untouched and do not count toward the budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    BaseNode,
    ImageNode,
    IndexNode,
    MetadataMode,
    Node,
    NodeWithScore,
    QueryBundle,
    TextNode,
)

from graphthrift.compress.compressor import build_compressor
from graphthrift.compress.result import CompressionResult, Compressor
from graphthrift.kernel import run_tags
from graphthrift.llamaindex.instrumentation import TAG_KEYS, current_tags

__all__ = ["CompressionPostprocessor"]


def _is_text(node: BaseNode) -> bool:
    """Plain text nodes only: images, index references and media pass through."""
    if isinstance(node, ImageNode | IndexNode):
        return False
    if isinstance(node, TextNode):
        return True
    if isinstance(node, Node):
        media = (node.image_resource, node.audio_resource, node.video_resource)
        return node.text_resource is not None and all(m is None for m in media)
    return False


def _with_text(item: NodeWithScore, text: str) -> NodeWithScore:
    """A copy of ``item`` with the new text; id, metadata, relationships and score kept.

    The stored embedding is cleared: it described the full text, not the kept part.
    """
    node = item.node.model_copy()
    node.metadata = dict(item.node.metadata)
    node.set_content(text)
    node.embedding = None
    return NodeWithScore(node=node, score=item.score)


class CompressionPostprocessor(BaseNodePostprocessor):
    """Keep only what answers the query, node by node, within a token budget.

    Args:
        compressor: any graphthrift ``Compressor``; default an ``ExtractiveCompressor``
            built from the settings below (given with any of them, raises ``ConfigError``).
        target_ratio: kept fraction in (0, 1] (kept tokens / original tokens).
        max_tokens: absolute budget for all text nodes together.
        model: the downstream model (counts tokens, prices the saving in the ledger).
        embedder: ``None`` (MiniLM when lexical evidence is weak), ``False`` (lexical
            only), or any embedder ``graphthrift.embed.embedders.as_embedder`` accepts (a LlamaIndex
            embedding works).
        ledger / tags: where the saving is recorded, with these tags (default: the
            compressor's own ledger, if any). Tags set by an enclosing
            ``graphthrift.llamaindex.tags(...)`` block win over these, as for LLM calls.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> pp = CompressionPostprocessor(target_ratio=0.5, embedder=False)
        >>> out = pp.postprocess_nodes(
        ...     [NodeWithScore(node=TextNode(text="Paris is in France. Rome is in Italy.",
        ...                                  metadata={"src": "a"}), score=0.9)],
        ...     query_str="Where is Rome?")
        >>> out[0].node.get_content(), out[0].node.metadata, out[0].score
        ('Rome is in Italy.', {'src': 'a'}, 0.9)
    """

    compressor: Any = None
    ledger: Any = None
    tags: dict[str, Any] = Field(default_factory=dict)

    def __init__(
        self,
        compressor: Compressor | None = None,
        *,
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        embedder: Any = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        core = build_compressor(
            "CompressionPostprocessor",
            compressor,
            target_ratio=target_ratio,
            max_tokens=max_tokens,
            model=model,
            embedder=embedder,
        )
        fields: dict[str, Any] = {"compressor": core, "ledger": ledger, "tags": dict(tags or {})}
        super().__init__(**fields, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "GraphthriftCompressionPostprocessor"

    def _split(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[str, list[int], list[str]]:
        text_at = [i for i, n in enumerate(nodes) if _is_text(n.node)]
        texts = [nodes[i].node.get_content(metadata_mode=MetadataMode.NONE) for i in text_at]
        question = query_bundle.query_str if query_bundle is not None else ""
        return question or "", text_at, texts

    @staticmethod
    def _merge(
        nodes: list[NodeWithScore], text_at: list[int], result: CompressionResult
    ) -> list[NodeWithScore]:
        kept = dict(zip(text_at, result.texts, strict=True))
        out: list[NodeWithScore] = []
        for i, item in enumerate(nodes):
            if i not in kept:
                out.append(item)  # not text: untouched
            elif kept[i]:
                out.append(_with_text(item, kept[i]))
        return out

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        question, text_at, texts = self._split(nodes, query_bundle)
        if not text_at:
            return list(nodes)
        core: Compressor = self.compressor
        result = core.compress(question, texts, ledger=self.ledger, tags=self._tags())
        return self._merge(nodes, text_at, result)

    def _tags(self) -> dict[str, Any]:
        """Tags bound with ``graphthrift.scoped`` (read by ``graphthrift.kernel.run_tags``),
        then the constructor's, then the enclosing ``tags()`` blocks': as the kernel orders
        them, a run's own tags win over an adapter's fixed ones, which win over bound ones."""
        bound = {k: v for k, v in run_tags(None).items() if k in TAG_KEYS}
        scoped = {k: v for k, v in current_tags().items() if k in TAG_KEYS}
        return {**bound, **self.tags, **scoped}

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        question, text_at, texts = self._split(nodes, query_bundle)
        if not text_at:
            return list(nodes)
        core: Compressor = self.compressor
        result = await core.acompress(question, texts, ledger=self.ledger, tags=self._tags())
        return self._merge(nodes, text_at, result)
