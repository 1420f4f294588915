"""LangChain adapters: the cost-tagging callback, ``BaseCache`` and document compressor."""

from __future__ import annotations

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "CostTagger": ".callbacks",
    "GraphthriftLangChainCache": ".cache",
    "as_langchain_cache": ".cache",
    "ExtractiveDocumentCompressor": ".compress",
    "CompressorDocumentCompressor": ".compress",
    "SimulatedChatModel": ".sim",
    "chat_model_from_env": ".sim",
    "BatchChatModel": ".batch",
    "TaskTracker": ".tasks",
    "DistillCallback": ".distill",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
