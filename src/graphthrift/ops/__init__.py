"""Operations: Batch API jobs, cost per successful task, alerts, distillation export.

Framework-free: the LangChain wrapper lives in ``graphthrift.langchain.batch``.
"""

from __future__ import annotations

from graphthrift.ops.alerts import (
    Alert,
    AlertConfigError,
    AlertMonitor,
    AlertRules,
    check_alerts,
    prometheus_rules,
    refusal_record,
    write_prometheus_rules,
)
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
from graphthrift.ops.distill import DistillCapture, NothingToExport, export_distill
from graphthrift.ops.tasks import (
    TaskNotIdentified,
    compare,
    cost_per_task,
    mark_task,
    set_task_ledger,
)

__all__ = [
    "Alert",
    "AlertConfigError",
    "AlertMonitor",
    "AlertRules",
    "AnthropicBatches",
    "BatchItemFailed",
    "BatchJobNotFound",
    "BatchJobTimeout",
    "BatchJobs",
    "BatchOutcome",
    "BatchRequest",
    "DistillCapture",
    "NothingToExport",
    "OpenAIBatches",
    "TaskNotIdentified",
    "check_alerts",
    "compare",
    "cost_per_task",
    "export_distill",
    "mark_task",
    "prometheus_rules",
    "refusal_record",
    "set_task_ledger",
    "write_prometheus_rules",
]
