"""LlamaIndex adapters (needs the ``llamaindex`` extra): instrumentation, postprocessors, memory."""

from __future__ import annotations

from graphthrift._lazy import lazy_getattr
from graphthrift.errors import require_extra

require_extra("llama_index.core", "llamaindex", "llama-index-core")

_EXPORTS = {
    "CostEventHandler": ".instrumentation",
    "instrument": ".instrumentation",
    "uninstrument": ".instrumentation",
    "tags": ".instrumentation",
    "CompressionPostprocessor": ".postprocessor",
    "CachedQueryEngine": ".cache",
    "BudgetedLLM": ".budget",
    "HistoryMemoryBlock": ".memory",
    "PrunedChatMemory": ".memory",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
