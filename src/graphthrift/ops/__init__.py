"""Operations: Batch API jobs (and, as they land, task outcomes, alerts, distillation).

Framework-free: the LangChain wrapper lives in ``graphthrift.langchain.batch``.
"""

from __future__ import annotations

from graphthrift.ops.batch import (
    AnthropicBatches,
    BatchItemFailed,
    BatchJobNotFound,
    BatchJobs,
    BatchJobTimeout,
    BatchOutcome,
    BatchRequest,
    OpenAIBatches,
)

__all__ = [
    "AnthropicBatches",
    "BatchItemFailed",
    "BatchJobNotFound",
    "BatchJobTimeout",
    "BatchJobs",
    "BatchOutcome",
    "BatchRequest",
    "OpenAIBatches",
]
