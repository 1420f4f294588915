"""Operations: Batch API jobs, cost per successful task (and, as they land, alerts).

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
from graphthrift.ops.tasks import compare, cost_per_task, mark_task, set_task_ledger

__all__ = [
    "AnthropicBatches",
    "BatchItemFailed",
    "BatchJobNotFound",
    "BatchJobTimeout",
    "BatchJobs",
    "BatchOutcome",
    "BatchRequest",
    "OpenAIBatches",
    "compare",
    "cost_per_task",
    "mark_task",
    "set_task_ledger",
]
