"""Composed scenario: a deploy stops the support agent mid-run; the next process resumes it.

Two tenants, one user and one thread each, through the ``create_agent`` support agent of
``scenario_kit`` with the stack, outermost first:

    tenant_prompt (dynamic_prompt)  -> the system prompt the cache key fingerprints
    SemanticCacheMiddleware         -> one cache, scoped by the run's tenant and user
    HistoryPruningMiddleware        -> what is sent is what gets reserved and paid
    BudgetMiddleware                -> a $ budget per tenant: reserves each call, settles it
    CostTagger (callback)           -> one ledger row per model call

The checkpointer is LangGraph's ``InMemorySaver`` over ``PersistentDict`` files (written when
the saver closes, as in tests/test_shutdown_langgraph.py), so a thread outlives its process.

1. A first process (this module run as a script) plays each thread's warm-up turns, then
   starts one unit of work per tenant in ``GracefulShutdown.work(thread_id=...)``: an order
   question whose answering model call (after the tool ran) hangs, holding its reservation.
   SIGTERM: the drain gives up on both units after its grace period and the process exits.
2. A second process, a fresh agent over the saved checkpoints, runs
   ``graphthrift.langgraph.resume_interrupted`` on every interrupted unit.
3. Here: nothing is left to resume, and a fresh agent asks both tenants' FAQ in new threads,
   served from the cache the first process wrote.

The checks: each unit is resumed exactly once and continues from its checkpoint (one model
call, its own tool result); the ledger's rows equal the fake models' calls per tenant, plus
one ``kind="interrupted"`` row per unit; no budget reservation is left open; each tenant's
cached answers are served to it only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver, PersistentDict
from scenario_kit import (
    CHEAP,
    FIRST_ORDER_Q,
    ScenarioRun,
    Turn,
    World,
    boundary_violations,
    first,
    history_violations,
    latest_human_index,
    plan_threads,
    play_scenario,
    price,
    support_agent,
    support_reply,
    support_tools,
    thread_config,
    tool_pair_problems_of,
)
from sqlalchemy import text

from graphthrift import Budget, CostTagger, Ledger, SemanticCache, Store
from graphthrift.budget.schema import RESERVATIONS_TABLE
from graphthrift.langgraph import resume_interrupted
from graphthrift.middleware import (
    BudgetMiddleware,
    HistoryPruningMiddleware,
    SemanticCacheMiddleware,
)
from graphthrift.resilience import GracefulShutdown

from fakes import CallLog, RecordingChatModel, _run_metadata

TENANT_MAX_USD = 0.05  # far above this traffic: the budget holds and settles, it never refuses
OUTPUT_CAP = 200
GRACE_S = 0.5
GUARD_S = 300  # a hang guard, not a timing
FAQ = "What are your opening hours?"
STALL_ORDER = "B-205"
STALL_Q = f"Where is my order {STALL_ORDER}?"
WARMUP = [
    FAQ,
    "Where is my order A-101?",
    "Is the store open on Sunday?",
    "Where are my orders A-102 and D-404?",
    "Please refund order C-310.",
    FIRST_ORDER_Q,
    "When are you open?",
    "Where is my order D-404?",
    FIRST_ORDER_Q,
]
_TESTS = Path(__file__).resolve().parents[1]
_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(_TESTS.parent / "src"), str(_TESTS), str(_TESTS / "scenarios")]
    ),
}


class StallingModel(RecordingChatModel):
    """A ``RecordingChatModel`` that hangs, unrecorded, on the answer to ``stall_on`` (the
    call after its tool ran): a provider call in flight when the deploy stops the process."""

    stall_on: str | None = None

    def _answer(self, messages: list[BaseMessage], run_manager: Any) -> AIMessage:
        at = latest_human_index(messages)
        if (
            self.stall_on is not None
            and at >= 0
            and messages[at].content == self.stall_on
            and messages[-1].type == "tool"
        ):
            tenant = _run_metadata(run_manager).get("tenant_id")
            print(f"stalled {tenant}", flush=True)
            while True:
                time.sleep(0.05)
        return super()._answer(messages, run_manager)


@dataclass
class Stack:
    agent: Any
    budget: Budget
    log: CallLog


def build_stack(
    world: World, store: Store, ledger: Ledger, *, checkpointer: Any = None, stall: bool = False
) -> Stack:
    """The support agent with the cache, history pruning and a $ budget per tenant."""
    log = CallLog()
    model = StallingModel(
        model_name=CHEAP, reply=support_reply, log=log, stall_on=STALL_Q if stall else None
    )
    cache = SemanticCache(store, namespace=f"drain-{world.tenants[0]}", ledger=ledger, timeout=5)
    budget = Budget(store, max_usd={"tenant": TENANT_MAX_USD}, max_output_tokens=OUTPUT_CAP)
    agent = support_agent(
        world,
        model,
        support_tools(world),
        [
            SemanticCacheMiddleware(cache),
            HistoryPruningMiddleware(max_tokens=600, target_tokens=350, model=CHEAP),
            BudgetMiddleware(budget),
        ],
        checkpointer=checkpointer,
    )
    return Stack(agent, budget, log)


@contextmanager
def durable_saver(folder: Path) -> Iterator[InMemorySaver]:
    """``InMemorySaver`` whose three maps are ``PersistentDict`` files in ``folder``, loaded
    when they exist and written when the saver closes."""
    names = iter(("storage", "writes", "blobs"))  # InMemorySaver's maps, in this order

    def factory(*args: Any) -> PersistentDict:
        d = PersistentDict(*args, filename=str(folder / f"{next(names)}.pickle"))
        if os.path.exists(d.filename):
            d.load()
        return d

    with InMemorySaver(factory=factory) as saver:
        yield saver


def _calls(log: CallLog) -> list[dict[str, Any]]:
    """The fake model's calls, as JSON: model, run metadata and usage."""
    keep = ("tenant_id", "user_id", "thread_id", "run_id")
    return [
        {
            "model": c["model"],
            "metadata": {k: c["metadata"].get(k) for k in keep},
            "usage": c["usage"],
        }
        for c in log.calls
    ]


def _turn_problems(world: World, turns: list[Turn]) -> list[str]:
    problems = [p for t in turns for p in boundary_violations(t, world)]
    problems += [p for t in turns for p in history_violations(t)]
    problems += tool_pair_problems_of(turns)
    problems += [f"{t.where()}: {t.error}" for t in turns if t.error]
    problems += [f"{t.where()}: no answer" for t in turns if not t.error and t.answer is None]
    return problems


def _pruned(turns: list[Turn]) -> int:
    """Model calls whose prompt was cut: fewer human turns than the thread had asked."""
    return sum(
        1
        for t in turns
        for c in t.calls
        if sum(1 for m in c["messages"] if m.type == "human") < t.index + 1
    )


# ---------------------------------------------------------------- the two processes


def _first_process(world: World, folder: Path, url: str) -> None:
    store = Store(url, home=folder / "first")
    ledger = Ledger(store, flush_interval=0.05)
    out: dict[str, Any] = {}
    try:
        with durable_saver(folder) as saver:
            stack = build_stack(world, store, ledger, checkpointer=saver, stall=True)
            shutdown = GracefulShutdown(ledger=ledger, budget=stack.budget, grace_s=GRACE_S)
            shutdown.install()  # SIGTERM: drain, mark the units interrupted, exit cleanly
            tagger = CostTagger(ledger)
            run = ScenarioRun(world, stack.log, ledger, stack.budget)
            plans = plan_threads(world, 1, "d", lambda: list(WARMUP))
            asyncio.run(
                play_scenario(
                    stack.agent, run, plans, lambda p: thread_config(p, callbacks=[tagger])
                )
            )
            out["problems"] = _turn_problems(world, run.turns)
            out["pruned"] = _pruned(run.turns)

            def unit(plan: Any) -> None:
                config = thread_config(plan, callbacks=[tagger])
                config["metadata"]["run_id"] = f"{plan.thread}-unit"
                with shutdown.work(
                    thread_id=plan.thread,
                    tenant_id=plan.tenant,
                    run_id=f"{plan.thread}-unit",
                    payload={"messages": [{"role": "user", "content": STALL_Q}]},
                    tags={"user_id": plan.user, "feature": "support"},
                ):
                    stack.agent.invoke({"messages": [{"role": "user", "content": STALL_Q}]}, config)

            for plan in plans:
                threading.Thread(target=unit, args=(plan,), daemon=True).start()
            try:
                while True:
                    time.sleep(0.05)
            finally:
                report = shutdown.report
                out["drain"] = None if report is None else asdict(report)
                out["calls"] = _calls(stack.log)
    finally:
        (folder / "first.json").write_text(json.dumps(out))
        ledger.close()
        store.close()


def _resume_process(world: World, folder: Path, url: str) -> None:
    store = Store(url, home=folder / "resume")
    ledger = Ledger(store, flush_interval=0.05)
    try:
        with durable_saver(folder) as saver:
            stack = build_stack(world, store, ledger, checkpointer=saver)
            shutdown = GracefulShutdown(ledger=ledger, budget=stack.budget)
            # one resumer, one config for every tenant (the units bring their own tags); by
            # tenant only because other tests share this database and leave units of theirs
            config: Any = {"callbacks": [CostTagger(ledger)]}
            reports = [
                resume_interrupted(stack.agent, shutdown, config=config, tenant_id=tenant)
                for tenant in world.tenants
            ]
            resumed = [u for r in reports for u in r.resumed]
            failed = [u for r in reports for u in r.failed]
            threads = {}
            for unit_id in (*resumed, *failed):
                unit = shutdown.inflight.get(unit_id)
                threads[unit_id] = None if unit is None else unit.thread_id
            finals = {}
            results = {k: v for r in reports for k, v in r.results.items()}
            for unit_id, state in results.items():
                messages = state.get("messages", [])
                finals[unit_id] = {
                    "answer": next(
                        (str(m.content) for m in reversed(messages) if m.type == "ai"), None
                    ),
                    "asked": sum(1 for m in messages if m.type == "human" and m.content == STALL_Q),
                }
            out = {
                "resumed": resumed,
                "failed": failed,
                "taken": [u for r in reports for u in r.taken],
                "threads": threads,
                "finals": finals,
                "calls": _calls(stack.log),
            }
    finally:
        ledger.close()
        store.close()
    (folder / "resume.json").write_text(json.dumps(out))


def _spawn(mode: str, world: World, folder: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, mode, json.dumps(asdict(world)), str(folder), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
        cwd=str(folder),
    )


# ---------------------------------------------------------------- the scenario, run once


@dataclass
class Restart:
    world: World
    first: dict[str, Any]
    resume: dict[str, Any]
    after: ScenarioRun
    again: list[Any]  # a third resumer's reports, by tenant
    ledger: Ledger
    store: Store


@pytest.fixture(scope="module")
def restart(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restart]:
    world = World.make(n_users=1)
    folder = tmp_path_factory.mktemp("drain-scenario")
    first_p = _spawn("first", world, folder, store.url)
    try:
        assert first_p.stdout is not None
        stalled = {first_p.stdout.readline().strip() for _ in world.tenants}
        assert stalled == {f"stalled {t}" for t in world.tenants}, (
            stalled,
            first_p.stderr.read() if first_p.stderr else "",
        )
        first_p.send_signal(signal.SIGTERM)
        _, err = first_p.communicate(timeout=GUARD_S)
    finally:
        if first_p.poll() is None:
            first_p.kill()
    assert first_p.returncode == 0, err
    second = _spawn("resume", world, folder, store.url)
    _, err = second.communicate(timeout=GUARD_S)
    assert second.returncode == 0, err

    ledger = Ledger(store, flush_interval=0.05)
    stack = build_stack(world, store, ledger)
    again = [
        resume_interrupted(stack.agent, GracefulShutdown(ledger=ledger), tenant_id=t)
        for t in world.tenants
    ]
    after = ScenarioRun(world, stack.log, ledger, stack.budget)
    tagger = CostTagger(ledger)
    asyncio.run(
        play_scenario(
            stack.agent,
            after,
            plan_threads(world, 1, "after", lambda: [FAQ, "Where is my order A-101?"]),
            lambda p: thread_config(p, callbacks=[tagger]),
        )
    )
    yield Restart(
        world,
        json.loads((folder / "first.json").read_text()),
        json.loads((folder / "resume.json").read_text()),
        after,
        again,
        ledger,
        store,
    )
    ledger.close()


def _thread(world: World, tenant: str) -> str:
    return f"{tenant}-{world.users[tenant][0]}-d0"


# ---------------------------------------------------------------- invariants, per family


def test_the_warm_up_was_answered_and_pruned_within_its_tenant(restart: Restart) -> None:
    assert not restart.first["problems"], first(restart.first["problems"])
    assert restart.first["pruned"] > 0, "history pruning never cut a prompt: the test is idle"
    drain = restart.first["drain"]
    assert drain is not None and drain["interrupted"] == len(restart.world.tenants), drain


def test_each_interrupted_unit_is_resumed_exactly_once_from_its_checkpoint(
    restart: Restart,
) -> None:
    world, resume = restart.world, restart.resume
    assert resume["failed"] == [] and resume["taken"] == [], resume
    assert sorted(resume["threads"][u] for u in resume["resumed"]) == sorted(
        _thread(world, t) for t in world.tenants
    )
    assert all(r.resumed == r.failed == () for r in restart.again), restart.again
    for unit_id in resume["resumed"]:
        unit = GracefulShutdown(store=restart.store).inflight.get(unit_id)
        assert unit is not None and (unit.status, unit.claims) == ("done", 1), unit
    for tenant in world.tenants:
        assert GracefulShutdown(store=restart.store).interrupted(tenant_id=tenant) == []
    # it continued after its tool step: one model call (the answer), the question asked once
    per_thread = Counter(c["metadata"]["thread_id"] for c in resume["calls"])
    assert per_thread == Counter(_thread(world, t) for t in world.tenants), per_thread
    assert all(final["asked"] == 1 for final in resume["finals"].values()), resume["finals"]


def test_the_resumed_answer_is_its_own_tenants_thread(restart: Restart) -> None:
    world, resume = restart.world, restart.resume
    by_thread = {resume["threads"][u]: f["answer"] for u, f in resume["finals"].items()}
    for tenant in world.tenants:
        user = world.users[tenant][0]
        want = f"Order {STALL_ORDER}: {world.order_status(tenant, user, STALL_ORDER)}"
        assert by_thread[_thread(world, tenant)] == want
    resumed_calls = {c["metadata"]["thread_id"]: c["metadata"] for c in resume["calls"]}
    for tenant in world.tenants:
        md = resumed_calls[_thread(world, tenant)]
        assert (md["tenant_id"], md["user_id"]) == (tenant, world.users[tenant][0]), md


def _ledger_key(thread: Any, model: Any, usage: dict[str, Any]) -> tuple[Any, ...]:
    return (thread, model, usage["input_tokens"], usage["output_tokens"])


def test_no_ledger_row_is_lost_or_doubled(restart: Restart) -> None:
    calls = [*restart.first["calls"], *restart.resume["calls"], *_calls(restart.after.log)]
    for tenant in restart.world.tenants:
        mine = [c for c in calls if c["metadata"]["tenant_id"] == tenant]
        rows = restart.ledger.records(tenant_id=tenant, kind="llm")
        booked = Counter(_ledger_key(r["thread_id"], r["model"], r) for r in rows)
        made = Counter(
            _ledger_key(c["metadata"]["thread_id"], c["model"], c["usage"]) for c in mine
        )
        assert booked == made, (tenant, booked - made, made - booked)
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(price(mine), abs=1e-9)


def test_one_interrupted_row_per_interrupted_unit(restart: Restart) -> None:
    for tenant in restart.world.tenants:
        rows = restart.ledger.records(tenant_id=tenant, kind="interrupted")
        assert [(r["thread_id"], r["run_id"]) for r in rows] == [
            (_thread(restart.world, tenant), f"{_thread(restart.world, tenant)}-unit")
        ], rows
        assert rows[0]["extra"]["unit_id"] in restart.resume["resumed"]


def test_no_budget_reservation_is_left_open(restart: Restart) -> None:
    calls = [*restart.first["calls"], *restart.resume["calls"], *_calls(restart.after.log)]
    budget = restart.after.budget
    for tenant in restart.world.tenants:
        row = budget.usage(tenant_id=tenant)["tenant"]
        assert (row["reserved_usd"], row["reserved_tokens"]) == (0, 0), row
        mine = [c for c in calls if c["metadata"]["tenant_id"] == tenant]
        assert row["spent_usd"] == pytest.approx(price(mine), abs=1e-9), row
        with restart.store.connect() as conn:
            held = conn.execute(
                text(f"SELECT count(*) FROM {RESERVATIONS_TABLE} WHERE scopes::text LIKE :t"),
                {"t": f"%{tenant}%"},
            ).scalar()
        assert held == 0, f"{tenant}: {held} reservations still open"


def test_cached_answers_survive_the_restart_for_their_own_tenant_only(restart: Restart) -> None:
    turns = restart.after.turns
    assert len(turns) == 2 * len(restart.world.tenants)
    problems = _turn_problems(restart.world, turns)
    problems += [
        f"{t.where()}: the FAQ cached before the restart was not served"
        for t in turns
        if t.question == FAQ and not t.served_from_cache
    ]
    assert not problems, first(problems)
    for tenant in restart.world.tenants:
        served = [m for t in turns if t.tenant == tenant for m in t.served_from_cache]
        assert served and all(restart.world.hours[tenant] in str(m.content) for m in served)
        thread = f"{tenant}-{restart.world.users[tenant][0]}-after0"
        rows = restart.ledger.records(tenant_id=tenant, kind="cache_hit", thread_id=thread)
        assert len(rows) == len(served), rows


if __name__ == "__main__":
    mode, world_json, folder_arg, url_arg = sys.argv[1:5]
    the_world = World(**json.loads(world_json))
    if mode == "first":
        _first_process(the_world, Path(folder_arg), url_arg)
    else:
        _resume_process(the_world, Path(folder_arg), url_arg)
