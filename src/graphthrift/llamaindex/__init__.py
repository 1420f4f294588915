"""LlamaIndex adapters (needs the ``llamaindex`` extra): instrumentation, postprocessors, memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    "SingleFlightLLM": ".resilience",
    "idempotent_function_tool": ".resilience",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .budget import BudgetedLLM as BudgetedLLM
    from .cache import CachedQueryEngine as CachedQueryEngine
    from .instrumentation import CostEventHandler as CostEventHandler
    from .instrumentation import instrument as instrument
    from .instrumentation import tags as tags
    from .instrumentation import uninstrument as uninstrument
    from .memory import HistoryMemoryBlock as HistoryMemoryBlock
    from .memory import PrunedChatMemory as PrunedChatMemory
    from .postprocessor import CompressionPostprocessor as CompressionPostprocessor
    from .resilience import SingleFlightLLM as SingleFlightLLM
    from .resilience import idempotent_function_tool as idempotent_function_tool
