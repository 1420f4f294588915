"""Composed scenario: cost per successful task over the whole stack.

The support agent of ``test_agent_scenario`` (semantic cache, history pruning, routing, a
token budget and a tool budget, ``CostTagger``) with ``TaskTracker`` beside the tagger, for
two tenants. Each turn is a graph run (a task); each thread is a task when asked. After the
run, a customer reopens one thread (feedback through ``mark_task``), and the other tenant
writes feedback for a thread of the *same id*. The checks: every task is counted once, its
cost is what the providers' usage costs, the cache savings are the ledger's, feedback
decides its own tenant's thread only, and the per-task figures agree on every read path
(per-task rollups on the hour, raw rows off it).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from scenario_kit import (
    ScenarioRun,
    World,
    by_thread,
    conversation,
    first,
    plan_threads,
    play_scenario,
    price,
    thread_config,
)
from test_agent_scenario import build_agent

from graphthrift import CostTagger, Ledger, mark_task
from graphthrift.langchain import TaskTracker
from graphthrift.ops.tasks import compare, cost_per_task

from fakes import CallLog

TURNS = 14
THREADS = 2

Run = ScenarioRun


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def task_run(store: Any) -> AsyncIterator[Run]:
    world = World.make(n_users=2)
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    agent, budget = build_agent(world, store, ledger, log)
    callbacks = [CostTagger(ledger), TaskTracker(ledger)]
    rng = random.Random(20261201)
    plans = plan_threads(world, THREADS, "task", lambda: conversation(rng, TURNS))
    yield await play_scenario(
        agent,
        Run(world, log, ledger, budget),
        plans,
        lambda plan: thread_config(plan, callbacks=callbacks),
    )
    ledger.close()


def _per(run: Run, tenant: str, task: str, **kw: Any) -> dict[str, Any]:
    [row] = cost_per_task(run.ledger.store, ["tenant_id"], task=task, tenant_id=tenant, **kw)
    return row


def test_every_run_is_one_successful_task_costing_what_the_providers_charged(
    task_run: Run,
) -> None:
    problems = []
    for tenant in task_run.world.tenants:
        turns = [t for t in task_run.turns if t.tenant == tenant]
        row = _per(task_run, tenant, "run_id")
        rows = task_run.ledger.records(tenant_id=tenant)
        runs = {r["run_id"] for r in rows if r["run_id"] and r["kind"] != "task"}
        outcomes = [r for r in rows if r["kind"] == "task"]
        idle = {r["run_id"] for r in outcomes} - runs
        # a run the budget stopped before any call has an outcome and no cost row (this
        # budget books no refusal rows): it is not a task with spend
        stopped = [t for t in turns if not t.calls and not t.served_from_cache]
        if len(idle) != len(stopped):
            problems.append(f"{tenant}: {len(idle)} runs without rows, {len(stopped)} stopped")
        if len(outcomes) != len(turns):
            problems.append(f"{tenant}: {len(turns)} runs, {len(outcomes)} outcome rows")
        if (row["tasks"], row["successful"], row["unknown"]) != (len(runs), len(runs), 0):
            problems.append(f"{tenant}: {len(runs)} runs booked, per-task row {row}")
        if row["cost_usd"] != pytest.approx(price(task_run.log.of(tenant_id=tenant)), abs=1e-6):
            problems.append(f"{tenant}: cost {row['cost_usd']} is not the providers' usage")
        if not 0 < row["tasks"] <= len(turns):
            problems.append(f"{tenant}: {row['tasks']} tasks for {len(turns)} turns")
    errors = [f"{t.where()}: {t.error}" for t in task_run.turns if t.error]
    assert not errors, first(errors)
    assert not problems, first(problems)


def test_cache_savings_per_task_are_the_ledgers_own(task_run: Run) -> None:
    for tenant in task_run.world.tenants:
        rows = task_run.ledger.records(tenant_id=tenant)
        hits = sum(r["saved_usd"] or 0 for r in rows if r["kind"] == "cache_hit")
        prompt_cache = sum(r["cache_savings_usd"] or 0 for r in rows)
        row = _per(task_run, tenant, "run_id")
        assert row["cache_saved_usd"] == pytest.approx(hits + prompt_cache, abs=1e-9)
    assert any(t.served_from_cache for t in task_run.turns), "nothing was served from cache"


def test_feedback_decides_its_own_tenants_thread_only(task_run: Run) -> None:
    first_tenant, second_tenant = task_run.world.tenants
    threads = {
        t: {tt.thread for tt in task_run.turns if tt.tenant == t} for t in task_run.world.tenants
    }
    before = {t: _per(task_run, t, "thread_id") for t in task_run.world.tenants}
    reopened = sorted(threads[first_tenant])[0]
    mark_task(success=False, ledger=task_run.ledger, thread_id=reopened, tenant_id=first_tenant)
    # the other tenant writes feedback for a thread of the same id (ids recur across tenants)
    mark_task(success=True, ledger=task_run.ledger, thread_id=reopened, tenant_id=second_tenant)
    task_run.ledger.flush()
    after = {t: _per(task_run, t, "thread_id") for t in task_run.world.tenants}
    assert before[first_tenant]["tasks"] == len(threads[first_tenant]) == THREADS * 2
    assert before[first_tenant]["successful"] == THREADS * 2
    assert (after[first_tenant]["successful"], after[first_tenant]["failed"]) == (
        THREADS * 2 - 1,
        1,
    )
    # approx: an hour's merge between the two reads may re-add the same costs in another order
    assert after[second_tenant] == pytest.approx(before[second_tenant])
    reopened_cost = sum(
        r["cost_usd"] or 0
        for r in task_run.ledger.records(tenant_id=first_tenant, thread_id=reopened, kind="llm")
    )
    assert after[first_tenant]["cost_usd"] == pytest.approx(before[first_tenant]["cost_usd"])
    assert after[first_tenant]["cost_per_successful_task"] == pytest.approx(
        before[first_tenant]["cost_usd"] / (THREADS * 2 - 1)
    )
    assert reopened_cost > 0


def test_rollups_and_raw_rows_give_the_same_figures(task_run: Run) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    since = hour - timedelta(hours=2)  # every row of the run is later
    for tenant in task_run.world.tenants:
        for task in ("run_id", "thread_id"):
            whole = _per(task_run, tenant, task)
            on_the_hour = _per(task_run, tenant, task, since=since)
            off_the_hour = _per(task_run, tenant, task, since=since - timedelta(seconds=1))
            assert on_the_hour == pytest.approx(whole)
            assert off_the_hour == pytest.approx(whole)
    a, b = task_run.world.tenants
    cmp = compare(task_run.ledger.store, "tenant_id", [a, b], task="thread_id")
    assert cmp["a"]["tasks"] == cmp["b"]["tasks"] == THREADS * 2
    assert len(by_thread(task_run.turns)) == THREADS * 2 * 2
