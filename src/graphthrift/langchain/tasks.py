"""``TaskTracker``: a graph run's outcome becomes the task's outcome in the ledger.

Pass it in ``config["callbacks"]`` beside ``CostTagger``. When the root run (the graph
invocation) ends, it books a ``task`` row with the same ``run_id`` the cost rows carry:
success when the run returned (or what ``success(output)`` says), failure when it raised.
``graphthrift.ops.mark_task`` given later for the same run overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from graphthrift import diagnostics
from graphthrift.kernel import run_tags
from graphthrift.ops.tasks import task_record

__all__ = ["TaskTracker"]


class TaskTracker(BaseCallbackHandler):
    """Book each root run's outcome as its task's outcome.

    Args:
        ledger: the ``Ledger`` to write to.
        success: ``success(output) -> bool`` reads the outcome from the graph's final state
            (e.g. ``lambda s: s["resolved"]``); None means "returned without raising".
        **default_tags: tenant_id, feature, route or prompt_version when the run has none.
    """

    run_inline = True
    raise_error = False

    def __init__(
        self,
        ledger: Any,
        *,
        success: Callable[[Any], bool] | None = None,
        **default_tags: Any,
    ) -> None:
        super().__init__()
        self.ledger = ledger
        self.success = success
        self.default_tags = default_tags
        self._roots: dict[UUID, dict[str, Any]] = {}

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is None:
            config = {"metadata": metadata or {}, "run_id": run_id}
            self._roots[run_id] = run_tags(config, **self.default_tags)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        tags = self._roots.pop(run_id, None)
        if tags is None:
            return
        ok = True
        if self.success is not None:
            try:
                ok = bool(self.success(outputs))
            except Exception as exc:
                diagnostics.count(
                    "task_success_failure", "graphthrift: TaskTracker success() raised: %r", exc
                )
                ok = False
        self._book(ok, tags)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        tags = self._roots.pop(run_id, None)
        if tags is not None:
            self._book(False, tags)

    def _book(self, ok: bool, tags: dict[str, Any]) -> None:
        keep = {k: v for k, v in tags.items() if k != "node" and k != "user_id"}
        self.ledger.record(task_record(ok, source="graph", **keep))
