"""graphthrift: make LLM agent graphs cheap without making them worse.

The core (this package minus ``langgraph``, ``middleware``, ``langchain``, ``llamaindex`` and
``cli``) imports no agent framework. Public names are imported lazily so that
``import graphthrift`` is fast and optional extras stay optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "Store": ".store",
    "StoreUnavailable": ".errors",
    "UnknownModelPrice": ".errors",
    "MissingExtra": ".errors",
    "Ledger": ".ledger",
    "LedgerRecord": ".ledger",
    "CostTagger": ".langchain.callbacks",
    "PriceBook": ".ledger",
    "set_price": ".ledger",
    "count_messages": ".text",
    "count_text": ".text",
    "TokenCount": ".text",
    "Embedder": ".embed",
    "MiniLMEmbedder": ".embed",
    "StaticEmbedder": ".embed",
    "ExactCache": ".cache",
    "SemanticCache": ".cache",
    "CacheHit": ".cache",
    "Compressor": ".compress",
    "ExtractiveCompressor": ".compress",
    "CompressionResult": ".compress",
    "InvalidCompressionTarget": ".compress",
    "BaseCompressor": ".compress",
    "LinguaModelError": ".compress",
    "LLMLinguaCompressor": ".compress",
    "Summarizer": ".summarize",
    "ExtractiveSummarizer": ".summarize",
    "ChatModelSummarizer": ".summarize",
    "HistoryPruner": ".history",
    "HistoryState": ".history",
    "PruneResult": ".history",
    "prune_history": ".history",
    "HistoryConfigError": ".history",
    "Budget": ".budget",
    "BudgetExceeded": ".errors",
    "Router": ".route",
    "PrometheusMetrics": ".ledger",
    "OtelExporter": ".ledger",
    "DifficultyClassifier": ".route",
    "JsonSchemaValidator": ".route",
    "ToolArgsValidator": ".route",
    "scoped": ".kernel",
    "SingleFlight": ".resilience",
    "RequestDedup": ".resilience",
    "ToolIdempotency": ".resilience",
    "Retrier": ".resilience",
    "RetryBudget": ".resilience",
    "SharedRateLimiter": ".resilience",
    "RateLimit": ".resilience",
    "CircuitBreaker": ".resilience",
    "Failover": ".resilience",
    "GracefulShutdown": ".resilience",
    "RetryBudgetExhausted": ".errors",
    "RateLimited": ".errors",
    "mark_task": ".ops.tasks",
    "GraphthriftError": ".errors",
    "StateSchemaError": ".errors",
    "ConfigError": ".errors",
    "wrap_model": ".langchain.wrapped",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .errors import GraphthriftError as GraphthriftError
    from .errors import MissingExtra as MissingExtra
    from .errors import StateSchemaError as StateSchemaError
    from .errors import StoreUnavailable as StoreUnavailable
    from .errors import UnknownModelPrice as UnknownModelPrice
    from .langchain.wrapped import wrap_model as wrap_model
    from .ledger import Ledger as Ledger
    from .ledger import LedgerRecord as LedgerRecord
    from .ledger import PriceBook as PriceBook
    from .ledger import set_price as set_price
    from .store import Store as Store
    from .text import TokenCount as TokenCount
    from .text import count_messages as count_messages
    from .text import count_text as count_text
