"""Resume, after a restart, the LangGraph runs a drain or a crash interrupted.

A LangGraph run with a checkpointer saves its state after every super-step. When a deploy
stops the process mid-run (``GracefulShutdown`` marks the run's unit interrupted, or the next
process finds it left by a ``kill -9``), ``graph.invoke(None, config)`` with the same
``thread_id`` continues from the last completed super-step: nothing done is done again.
``resume_interrupted(graph, shutdown)`` does that for every interrupted unit carrying a
``thread_id``, each claimed by exactly one process.

The checkpointer must outlive the process (``langgraph-checkpoint-postgres``'s
``PostgresSaver``, ``langgraph-checkpoint-sqlite``, or any saver on durable storage);
``InMemorySaver`` is gone with the process, so such a run starts again from its payload.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig

from graphthrift.resilience.inflight import InFlightUnit, ResumeReport
from graphthrift.resilience.shutdown import GracefulShutdown

__all__ = ["aresume_interrupted", "resume_interrupted", "unit_config"]


#: The recorded tags a resumed run keeps (who and what it is for, not where it ran).
_CARRIED = frozenset({"tenant_id", "user_id", "feature", "route", "prompt_version"})


def unit_config(unit: InFlightUnit, config: RunnableConfig | None = None) -> RunnableConfig:
    """The run config that points the graph at the unit's thread (and checkpoint namespace),
    merged over ``config`` (callbacks, recursion limit, other configurable keys).

    The run's metadata gets the unit's ``tenant_id`` and its ``tags`` that describe who and
    what the work is for (``_CARRIED``: tenant, user, feature, route, prompt version) as
    recorded when it started, over ``config``'s: one resumer serves every tenant, and a
    resumed run must read its own tenant's prompt, cache scope and budget and book its
    ledger rows to it. Its old ``run_id``, ``thread_id`` and ``node`` are not carried: the
    resumed run is a new run (``resumed_run_id`` names the old one)."""
    if unit.thread_id is None:
        raise ValueError(f"in-flight unit {unit.key!r} carries no thread_id to resume")
    base: dict[str, Any] = dict(config or {})
    configurable = dict(base.get("configurable") or {})
    configurable["thread_id"] = unit.thread_id
    if unit.checkpoint_ns:
        configurable["checkpoint_ns"] = unit.checkpoint_ns
    base["configurable"] = configurable
    metadata = dict(base.get("metadata") or {})
    metadata.update({k: v for k, v in unit.tags.items() if k in _CARRIED and v is not None})
    if unit.tenant_id is not None:
        metadata["tenant_id"] = unit.tenant_id
    if unit.run_id is not None:
        metadata.setdefault("resumed_run_id", unit.run_id)
    if metadata:
        base["metadata"] = metadata
    return base  # type: ignore[return-value]  # a RunnableConfig is a TypedDict


def resume_interrupted(
    graph: Any,
    shutdown: GracefulShutdown,
    *,
    config: RunnableConfig | None = None,
    tenant_id: str | None = None,
    limit: int = 100,
) -> ResumeReport:
    """Continue every interrupted run that carries a ``thread_id`` from its checkpoint.

    ``graph`` is a compiled graph with a durable checkpointer. A thread with a pending
    super-step continues (``graph.invoke(None, config)``); a thread the checkpointer has no
    state for (stopped before its first step, or an in-memory saver) starts again from the
    unit's ``payload``; a thread that had already reached its end is just marked done.
    The final states are in the report's ``results``, by unit id.
    """

    def resume(unit: InFlightUnit) -> Any:
        run_config = unit_config(unit, config)
        snapshot = graph.get_state(run_config)
        if snapshot.created_at is None:  # no checkpoint: start over from the payload
            if unit.payload is None:
                raise ValueError(
                    f"thread {unit.thread_id!r} has no checkpoint and unit {unit.key!r} no"
                    " payload to start it again"
                )
            return graph.invoke(unit.payload, run_config)
        if not snapshot.next:  # the run had reached its end before the process stopped
            return snapshot.values
        return graph.invoke(None, run_config)

    return shutdown.resume_interrupted(
        resume,
        tenant_id=tenant_id,
        where=lambda unit: unit.thread_id is not None,
        limit=limit,
    )


async def aresume_interrupted(
    graph: Any,
    shutdown: GracefulShutdown,
    *,
    config: RunnableConfig | None = None,
    tenant_id: str | None = None,
    limit: int = 100,
) -> ResumeReport:
    """``resume_interrupted`` for async graphs and checkpointers (``ainvoke``)."""

    async def resume(unit: InFlightUnit) -> Any:
        run_config = unit_config(unit, config)
        snapshot = await graph.aget_state(run_config)
        if snapshot.created_at is None:
            if unit.payload is None:
                raise ValueError(
                    f"thread {unit.thread_id!r} has no checkpoint and unit {unit.key!r} no"
                    " payload to start it again"
                )
            return await graph.ainvoke(unit.payload, run_config)
        if not snapshot.next:
            return snapshot.values
        return await graph.ainvoke(None, run_config)

    return await shutdown.aresume_interrupted(
        resume,
        tenant_id=tenant_id,
        where=lambda unit: unit.thread_id is not None,
        limit=limit,
    )
