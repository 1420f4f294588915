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
    "HistoryRequestTooLarge": ".history",
    "UnsupportedMessage": ".history",
    "HistoryStateError": ".history",
    "CacheUnavailable": ".cache",
    "BudgetScopeMissing": ".budget",
    "EmbeddingShapeError": ".embed",
    "NothingToExport": ".ops.distill",
    "TaskNotIdentified": ".ops.tasks",
    "RequestIdConflict": ".errors",
    "ToolCallInProgress": ".errors",
    "NoCandidateLeft": ".errors",
    "ShuttingDown": ".errors",
    "LedgerFlushTimeout": ".errors",
    "BatchItemFailed": ".errors",
    "BatchJobNotFound": ".errors",
    "BatchJobTimeout": ".errors",
    "AlertConfigError": ".errors",
    "DataFileError": ".errors",
    "DataSetMissing": ".errors",
    "ConversationFormatError": ".errors",
    "TrafficFileError": ".errors",
    "wrap_model": ".langchain.wrapped",
    "BadScopeText": ".errors",
    "CacheArgumentError": ".errors",
    "UnknownScopeKey": ".errors",
    "ConfigTypeError": ".errors",
    "UnknownReportKey": ".errors",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .budget import Budget as Budget
    from .budget import BudgetScopeMissing as BudgetScopeMissing
    from .cache import CacheHit as CacheHit
    from .cache import CacheUnavailable as CacheUnavailable
    from .cache import ExactCache as ExactCache
    from .cache import SemanticCache as SemanticCache
    from .compress import BaseCompressor as BaseCompressor
    from .compress import CompressionResult as CompressionResult
    from .compress import Compressor as Compressor
    from .compress import ExtractiveCompressor as ExtractiveCompressor
    from .compress import InvalidCompressionTarget as InvalidCompressionTarget
    from .compress import LinguaModelError as LinguaModelError
    from .compress import LLMLinguaCompressor as LLMLinguaCompressor
    from .embed import Embedder as Embedder
    from .embed import EmbeddingShapeError as EmbeddingShapeError
    from .embed import MiniLMEmbedder as MiniLMEmbedder
    from .embed import StaticEmbedder as StaticEmbedder
    from .errors import AlertConfigError as AlertConfigError
    from .errors import BadScopeText as BadScopeText
    from .errors import BatchItemFailed as BatchItemFailed
    from .errors import BatchJobNotFound as BatchJobNotFound
    from .errors import BatchJobTimeout as BatchJobTimeout
    from .errors import BudgetExceeded as BudgetExceeded
    from .errors import CacheArgumentError as CacheArgumentError
    from .errors import ConfigError as ConfigError
    from .errors import ConfigTypeError as ConfigTypeError
    from .errors import ConversationFormatError as ConversationFormatError
    from .errors import DataFileError as DataFileError
    from .errors import DataSetMissing as DataSetMissing
    from .errors import GraphthriftError as GraphthriftError
    from .errors import LedgerFlushTimeout as LedgerFlushTimeout
    from .errors import MissingExtra as MissingExtra
    from .errors import NoCandidateLeft as NoCandidateLeft
    from .errors import RateLimited as RateLimited
    from .errors import RequestIdConflict as RequestIdConflict
    from .errors import RetryBudgetExhausted as RetryBudgetExhausted
    from .errors import ShuttingDown as ShuttingDown
    from .errors import StateSchemaError as StateSchemaError
    from .errors import StoreUnavailable as StoreUnavailable
    from .errors import ToolCallInProgress as ToolCallInProgress
    from .errors import TrafficFileError as TrafficFileError
    from .errors import UnknownModelPrice as UnknownModelPrice
    from .errors import UnknownReportKey as UnknownReportKey
    from .errors import UnknownScopeKey as UnknownScopeKey
    from .history import HistoryConfigError as HistoryConfigError
    from .history import HistoryPruner as HistoryPruner
    from .history import HistoryRequestTooLarge as HistoryRequestTooLarge
    from .history import HistoryState as HistoryState
    from .history import HistoryStateError as HistoryStateError
    from .history import PruneResult as PruneResult
    from .history import UnsupportedMessage as UnsupportedMessage
    from .history import prune_history as prune_history
    from .kernel import scoped as scoped
    from .langchain.callbacks import CostTagger as CostTagger
    from .langchain.wrapped import wrap_model as wrap_model
    from .ledger import Ledger as Ledger
    from .ledger import LedgerRecord as LedgerRecord
    from .ledger import OtelExporter as OtelExporter
    from .ledger import PriceBook as PriceBook
    from .ledger import PrometheusMetrics as PrometheusMetrics
    from .ledger import set_price as set_price
    from .ops.distill import NothingToExport as NothingToExport
    from .ops.tasks import TaskNotIdentified as TaskNotIdentified
    from .ops.tasks import mark_task as mark_task
    from .resilience import CircuitBreaker as CircuitBreaker
    from .resilience import Failover as Failover
    from .resilience import GracefulShutdown as GracefulShutdown
    from .resilience import RateLimit as RateLimit
    from .resilience import RequestDedup as RequestDedup
    from .resilience import Retrier as Retrier
    from .resilience import RetryBudget as RetryBudget
    from .resilience import SharedRateLimiter as SharedRateLimiter
    from .resilience import SingleFlight as SingleFlight
    from .resilience import ToolIdempotency as ToolIdempotency
    from .route import DifficultyClassifier as DifficultyClassifier
    from .route import JsonSchemaValidator as JsonSchemaValidator
    from .route import Router as Router
    from .route import ToolArgsValidator as ToolArgsValidator
    from .store import Store as Store
    from .summarize import ChatModelSummarizer as ChatModelSummarizer
    from .summarize import ExtractiveSummarizer as ExtractiveSummarizer
    from .summarize import Summarizer as Summarizer
    from .text import TokenCount as TokenCount
    from .text import count_messages as count_messages
    from .text import count_text as count_text
