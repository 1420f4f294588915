"""LangChain adapters: the cost-tagging callback, ``BaseCache`` and document compressor."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # pragma: no cover
    from .batch import BatchChatModel as BatchChatModel
    from .cache import GraphthriftLangChainCache as GraphthriftLangChainCache
    from .cache import as_langchain_cache as as_langchain_cache
    from .callbacks import CostTagger as CostTagger
    from .compress import CompressorDocumentCompressor as CompressorDocumentCompressor
    from .compress import ExtractiveDocumentCompressor as ExtractiveDocumentCompressor
    from .distill import DistillCallback as DistillCallback
    from .sim import SimulatedChatModel as SimulatedChatModel
    from .sim import chat_model_from_env as chat_model_from_env
    from .tasks import TaskTracker as TaskTracker
