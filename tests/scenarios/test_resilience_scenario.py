"""Composed scenario: a provider outage under the resilience layer, the cache, a budget and
the ledger, in a ``create_agent`` support agent.

Two tenants x two users x two threads of seeded conversations over ``invoke``,
``stream(stream_mode="messages")`` and ``astream``; every turn is its own run (``run_id``).
The agent's model (gpt-4o-mini) is down (HTTP 503) for a stretch of the traffic; the only
fallback, gpt-4o, costs about 17 times as much. The stack, outermost first:

    tenant_prompt (dynamic_prompt)  -> the system prompt the cache key fingerprints
    SemanticCacheMiddleware         -> a hit skips everything below
    FailoverMiddleware              -> circuit breaker; skips a model the run cannot pay for
    ResilienceMiddleware            -> one retry per candidate; charges the run's budget
    BudgetMiddleware                -> reserves each call per thread at the model called
    CostTagger (callback)           -> one ledger row per provider call, failed ones too

A run's budget (``RunBudget``) pays any number of primary calls, and one fallback call but
not two: during the outage an FAQ turn fails over, and an order turn (a tool call, then the
answer) is refused at its second call. The breaker's clock is the turn count, so the circuit
opens, half-opens and closes with the traffic, not with the machine's speed. After the
traffic, the ledger's report read from its rollups must equal the raw rows' totals.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from scenario_kit import (
    BUDGET_STOP,
    CHEAP,
    STRONG,
    Driver,
    Plan,
    ScenarioRun,
    World,
    boundary_violations,
    conversation,
    first,
    history_violations,
    plan_threads,
    price,
    support_agent,
    support_reply,
    support_tools,
    thread_config,
    tool_pair_problems_of,
    written_by_graphthrift,
)

from graphthrift import Budget, CostTagger, Ledger, SemanticCache
from graphthrift.errors import BudgetExceeded
from graphthrift.ledger.query import rollups_answer
from graphthrift.middleware import (
    BudgetMiddleware,
    FailoverMiddleware,
    ResilienceMiddleware,
    SemanticCacheMiddleware,
)
from graphthrift.resilience import CircuitBreaker, Retrier, RunBudget

from fakes import CallLog, RecordingChatModel, UpstreamError, _run_metadata

PRIMARY, BACKUP = CHEAP, STRONG
TURNS = 8
THREADS = 2
OUTAGE = (18, 42)  # turns (counted over all threads) during which the primary answers 503
RUN_MAX_USD = 0.003  # primary calls: ~$0.0001 each; one fallback call fits, two do not
OUTPUT_CAP = 200
THREAD_TOKENS = 2_200
FEATURES = ("support", "orders")  # the first user of each tenant asks as support, the second


class Outage:
    """The traffic's clock (turns started) and whether the primary provider is down now."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.turn = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.turn += 1

    def clock(self) -> float:
        return float(self.turn)

    @property
    def down(self) -> bool:
        return self.start <= self.turn < self.end


class FlakyRecordingModel(RecordingChatModel):
    """A ``RecordingChatModel`` whose provider answers 503 while ``outage`` is down; each
    refused call is logged in ``faults`` with the run's metadata."""

    outage: Any = None
    faults: Any = None

    def _answer(self, messages: Any, run_manager: Any) -> Any:
        if self.outage is not None and self.outage.down:
            metadata = _run_metadata(run_manager)
            self.faults.add({"model": self.model_name, "metadata": metadata, "usage": None})
            raise UpstreamError("503 Service Unavailable: the provider is overloaded")
        return super()._answer(messages, run_manager)


@dataclass
class Traffic(ScenarioRun):
    """The run, plus the resilience layer's parts and what failed at the provider."""

    faults: CallLog = field(default_factory=CallLog)
    outage: Outage = field(default_factory=lambda: Outage(*OUTAGE))
    run_of: dict[str, int] = field(default_factory=dict)  # run id -> the turn it started at
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.spend = RunBudget(RUN_MAX_USD, ledger=self.ledger)
        self.breaker = CircuitBreaker(
            window_s=30,
            min_calls=4,
            error_rate=0.5,
            consecutive=3,
            open_s=12,
            probe_after_s=4,
            clock=self.outage.clock,  # the traffic's turns, not the machine's seconds
        )


class RunDriver(Driver):
    """Each turn is its own run (``run_id``) and ticks the outage's clock."""

    def __init__(self, graph: Any, run: Traffic, tagger: CostTagger) -> None:
        super().__init__(graph, run, lambda plan: thread_config(plan, callbacks=[tagger]))
        self.outage = run.outage
        self.runs = run.run_of

    def turn_config(self, plan: Plan, i: int, config: dict[str, Any]) -> dict[str, Any]:
        self.outage.tick()
        run_id = f"{plan.thread}-r{i}"
        self.runs[run_id] = self.outage.turn  # when the run started, on the traffic's clock
        feature = FEATURES[self.run.world.users[plan.tenant].index(plan.user)]
        metadata = {**config["metadata"], "run_id": run_id, "feature": feature}
        return {**config, "metadata": metadata}


def build_agent(world: World, store: Any, ledger: Ledger, run: Traffic) -> Any:
    primary = FlakyRecordingModel(
        model_name=PRIMARY, reply=support_reply, log=run.log, outage=run.outage, faults=run.faults
    )
    backup = RecordingChatModel(model_name=BACKUP, reply=support_reply, log=run.log)
    cache = SemanticCache(store, namespace=f"outage-{world.tenants[0]}", ledger=ledger, timeout=5)
    retrier = Retrier(max_retries=1, sleep=lambda _s: None, asleep=_no_wait)
    return support_agent(
        world,
        primary,
        support_tools(world),
        [
            SemanticCacheMiddleware(cache),
            FailoverMiddleware(
                {BACKUP: backup},
                breaker=run.breaker,
                ledger=ledger,
                run_budget=run.spend,
                max_output_tokens=OUTPUT_CAP,
            ),
            ResilienceMiddleware(
                retrier=retrier, run_budget=run.spend, max_output_tokens=OUTPUT_CAP
            ),
            BudgetMiddleware(run.budget),
        ],
    )


async def _no_wait(_s: float) -> None:
    return None


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traffic(store: Any) -> AsyncIterator[Traffic]:
    world = World.make(n_users=2)
    ledger = Ledger(store, flush_interval=0.05)
    budget = Budget(
        store, max_tokens={"thread": THREAD_TOKENS}, max_output_tokens=OUTPUT_CAP, ledger=ledger
    )
    run = Traffic(world, CallLog(), ledger, budget)
    agent = build_agent(world, store, ledger, run)
    rng = random.Random(20261130)
    plans = plan_threads(world, THREADS, "o", lambda: conversation(rng, TURNS))
    await RunDriver(agent, run, CostTagger(ledger)).play(plans)
    ledger.flush()
    yield run
    ledger.close()


def _run_id(turn: Any) -> str:
    return f"{turn.thread}-r{turn.index}"


def _rows(run: Traffic, **filters: Any) -> list[dict[str, Any]]:
    return [r for t in run.world.tenants for r in run.ledger.records(tenant_id=t, **filters)]


def _refused(run: Traffic) -> list[Any]:
    return [t for t in run.turns if t.error is not None]


def _faults_of(run: Traffic, run_id: str) -> list[dict[str, Any]]:
    return run.faults.of(run_id=run_id)


# ---------------------------------------------------------------- invariants, per family


def test_every_turn_answers_or_is_refused_by_its_run_budget(traffic: Traffic) -> None:
    assert len(traffic.turns) == 2 * 2 * THREADS * TURNS
    problems = [
        f"{t.where()}: {t.error}"
        for t in _refused(traffic)
        if "NoCandidateLeft" not in str(t.error) or "over budget" not in str(t.error)
    ]
    problems += [f"{t.where()}: no answer" for t in traffic.turns if not t.error and not t.answer]
    assert not problems, first(problems)
    # the scenario exercises what it claims: an outage, failovers, refusals and recovery
    assert traffic.faults.calls, "the primary never failed"
    assert _refused(traffic), "no run was refused by its budget"
    assert any(c["model"] == BACKUP for c in traffic.log.calls), "nothing failed over"
    assert traffic.outage.turn == len(traffic.turns)


def test_no_run_goes_over_its_budget(traffic: Traffic) -> None:
    problems = []
    booked: Counter[str] = Counter()
    for row in _rows(traffic, kind="llm"):
        booked[row["run_id"]] += row["cost_usd"] or 0.0
    for run_id in traffic.run_of:
        if booked[run_id] > RUN_MAX_USD + 1e-12:
            problems.append(f"{run_id}: the ledger booked ${booked[run_id]:.6f}")
        if traffic.spend.spent(run_id) > RUN_MAX_USD + 1e-12:
            problems.append(f"{run_id}: the run budget charged ${traffic.spend.spent(run_id):.6f}")
        if traffic.spend.spent(run_id) != pytest.approx(booked[run_id], abs=1e-9):
            problems.append(
                f"{run_id}: run budget charged ${traffic.spend.spent(run_id):.6f}, "
                f"ledger booked ${booked[run_id]:.6f}"
            )
    assert not problems, first(problems)
    # the limit binds mid-run: a run refused after it had paid for a fallback call
    assert any(booked[_run_id(t)] > 0 for t in _refused(traffic))


def test_every_provider_call_is_booked_once_with_its_model_and_outcome(traffic: Traffic) -> None:
    for tenant in traffic.world.tenants:
        calls = traffic.log.of(tenant_id=tenant)
        faults = traffic.faults.of(tenant_id=tenant)
        rows = traffic.ledger.records(tenant_id=tenant, kind="llm")
        delivered = Counter((r["run_id"], r["model"]) for r in rows if r["success"])
        failed = Counter(
            (r["run_id"], r["model"], r["error_type"]) for r in rows if not r["success"]
        )
        assert delivered == Counter((c["metadata"]["run_id"], c["model"]) for c in calls), tenant
        assert failed == Counter(
            (c["metadata"]["run_id"], c["model"], "upstream") for c in faults
        ), tenant
        booked = sum(r["cost_usd"] for r in rows)
        assert booked == pytest.approx(price(calls), abs=1e-9), tenant
        assert all(r["cost_usd"] == 0 for r in rows if not r["success"])  # a 503 is not billed


def test_failover_reasons_are_recorded(traffic: Traffic) -> None:
    problems = []
    rows = _rows(traffic, kind="failover")
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    reasons = {"upstream", "circuit open"}
    for turn in traffic.turns:
        run_id = _run_id(turn)
        chosen = [r["extra"]["chosen"] for r in by_run.get(run_id, [])]
        backup_calls = sum(1 for c in turn.calls if c["model"] == BACKUP)
        if chosen.count(BACKUP) != backup_calls:
            problems.append(f"{turn.where()}: {backup_calls} fallback calls, rows chose {chosen}")
        for row in by_run.get(run_id, []):
            skipped = row["extra"]["skipped"]
            if row["tenant_id"] != turn.tenant:
                problems.append(f"{turn.where()}: failover row of tenant {row['tenant_id']}")
            if skipped.get(PRIMARY) not in reasons:
                problems.append(f"{turn.where()}: primary skipped as {skipped}")
            if row["extra"]["chosen"] is None and skipped.get(BACKUP) != "over budget":
                problems.append(f"{turn.where()}: refused, yet the fallback was {skipped}")
        if turn.error is not None and None not in chosen:
            problems.append(f"{turn.where()}: refused without a failover row saying why")
    assert not problems, first(problems)
    seen = {r["extra"]["skipped"].get(PRIMARY) for r in rows}
    assert seen == reasons  # failed calls, then an open circuit


def test_the_circuit_opens_in_the_outage_and_closes_after_it(traffic: Traffic) -> None:
    faulted = {c["metadata"]["run_id"] for c in traffic.faults.calls}
    # fewer runs met the outage than ran in it: the open circuit spared the provider
    assert 0 < len(faulted) < OUTAGE[1] - OUTAGE[0]
    skipped = [r for r in _rows(traffic, kind="failover") if "circuit open" in str(r["extra"])]
    assert skipped
    # after the outage the probe went through, the circuit closed, the primary answers again
    after = {c["metadata"]["run_id"] for c in traffic.log.calls if c["model"] == PRIMARY}
    assert any(traffic.run_of[r] > OUTAGE[1] for r in after)
    assert traffic.breaker.state(PRIMARY) == "closed"


def test_a_refused_run_is_a_ledger_refusal_row(traffic: Traffic) -> None:
    rows = _rows(traffic, kind="refusal")
    refusals: Counter[str] = Counter(r["run_id"] for r in rows)
    stopped = {
        _run_id(t)
        for t in traffic.turns
        if any(written_by_graphthrift(m) and BUDGET_STOP in str(m.content) for m in t.new_messages)
    }
    refused = {_run_id(t) for t in _refused(traffic)}
    assert refused and stopped, "the scenario must refuse runs by both budgets"
    problems = [
        f"{r}: refused, {refusals[r]} refusal rows"
        for r in sorted(refused | stopped)
        if refusals[r] != 1
    ]
    problems += [
        f"{r}: {n} refusal rows, yet the run was not refused"
        for r, n in refusals.items()
        if r not in refused | stopped
    ]
    problems += [f"{r['run_id']}: refusal row of {r['tenant_id']}" for r in rows if not _own(r)]
    assert not problems, first(problems)


def test_a_cache_hit_calls_no_provider_and_books_one_saving(traffic: Traffic) -> None:
    problems = []
    for tenant in traffic.world.tenants:
        turns = [t for t in traffic.turns if t.tenant == tenant]
        served = [m for t in turns for m in t.served_from_cache]
        rows = traffic.ledger.records(tenant_id=tenant, kind="cache_hit")
        saving = [r for r in rows if (r["saved_usd"] or 0) > 0]
        if not len(rows) == len(saving) == len(served):
            problems.append(
                f"{tenant}: {len(served)} answers served from the cache, {len(rows)} cache_hit "
                f"rows, {len(saving)} of them with a saving"
            )
        for t in turns:
            if t.served_from_cache and (t.calls or _faults_of(traffic, _run_id(t))):
                problems.append(f"{t.where()}: served from the cache, yet the provider was called")
        problems += [
            f"{tenant}: served from the cache: {m.content!r}"
            for m in served
            if written_by_graphthrift(m) or "not sure" in str(m.content)
        ]
    assert not problems, first(problems)
    assert any(t.served_from_cache for t in traffic.turns), "nothing was served from the cache"


def _own(row: dict[str, Any]) -> bool:
    """A row's run belongs to its tenant (run ids start with the thread, which starts with
    the tenant)."""
    return row["run_id"] is None or str(row["run_id"]).startswith(f"{row['tenant_id']}-")


def test_tenants_stay_isolated(traffic: Traffic) -> None:
    problems = [p for t in traffic.turns for p in boundary_violations(t, traffic.world)]
    problems += [p for t in traffic.turns for p in history_violations(t)]
    problems += tool_pair_problems_of(traffic.turns)
    rows = _rows(traffic)
    problems += [
        f"{r['kind']} row of run {r['run_id']} booked to {r['tenant_id']}"
        for r in rows
        if not _own(r)
    ]
    for c in [*traffic.log.calls, *traffic.faults.calls]:
        md = c["metadata"]
        if not str(md["run_id"]).startswith(f"{md['tenant_id']}-{md['user_id']}-"):
            problems.append(
                f"call of run {md['run_id']} made for {md['user_id']}@{md['tenant_id']}"
            )
    assert not problems, first(problems)
    assert any("account=" in str(t.answer.content) for t in traffic.turns if t.answer)
    assert {r["kind"] for r in rows} >= {"llm", "failover", "refusal", "cache_hit"}


def test_each_cache_saving_is_booked_to_its_run_and_thread(traffic: Traffic) -> None:
    """A report by run or thread shows the savings of its cache hits."""
    hits = Counter((t.thread, _run_id(t)) for t in traffic.turns for _ in t.served_from_cache)
    rows = _rows(traffic, kind="cache_hit")
    assert hits and Counter((r["thread_id"], r["run_id"]) for r in rows) == hits


# ---------------------------------------------------------------- the report from the rollups

TOTALS = ("requests", "input_tokens", "output_tokens", "cache_hits", "saved_tokens")
MONEY = ("cost_usd", "saved_usd")


def _raw_totals(rows: list[dict[str, Any]]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The report's totals, added up from raw ledger rows by (tenant, feature)."""
    out: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        into = out.setdefault(
            (r["tenant_id"], r["feature"]), dict.fromkeys(TOTALS, 0) | dict.fromkeys(MONEY, 0.0)
        )
        llm = r["kind"] == "llm"
        into["requests"] += llm
        into["input_tokens"] += r["input_tokens"] if llm else 0
        into["output_tokens"] += r["output_tokens"] if llm else 0
        into["cache_hits"] += r["kind"] == "cache_hit"
        into["saved_tokens"] += r["saved_tokens"]
        into["cost_usd"] += r["cost_usd"] or 0.0
        into["saved_usd"] += r["saved_usd"] or 0.0
    return out


def test_the_report_from_the_rollups_equals_the_raw_rows(traffic: Traffic) -> None:
    hour = traffic.started.replace(minute=0, second=0, microsecond=0)
    if hour.hour == 0:  # a since at midnight reads the daily rollups; this one must not
        hour -= timedelta(hours=1)
    by = ("tenant_id", "feature")
    assert rollups_answer(by, hour, None, {"tenant_id": "x"})
    for tenant in traffic.world.tenants:
        raw = _raw_totals(traffic.ledger.records(tenant_id=tenant))
        assert {f for _, f in raw} >= {*FEATURES, None}  # failover rows carry no feature
        for since in (None, hour):  # the daily rollups, then the hourly ones
            report = traffic.ledger.report(by, since=since, tenant_id=tenant)
            got = {(r["tenant_id"], r["feature"]): r for r in report}
            assert set(got) == set(raw), (since, tenant)
            for key, want in raw.items():
                assert {k: got[key][k] for k in TOTALS} == {k: want[k] for k in TOTALS}, key
                for k in MONEY:
                    assert got[key][k] == pytest.approx(want[k], abs=1e-9), (since, key, k)
        # and the raw rows are what the traffic did
        calls = traffic.log.of(tenant_id=tenant)
        faults = traffic.faults.of(tenant_id=tenant)
        assert sum(v["requests"] for v in raw.values()) == len(calls) + len(faults)
        assert sum(v["cost_usd"] for v in raw.values()) == pytest.approx(price(calls), abs=1e-9)
        served = sum(len(t.served_from_cache) for t in traffic.turns if t.tenant == tenant)
        assert sum(v["cache_hits"] for v in raw.values()) == served


def test_a_call_the_run_budget_refuses_is_a_refusal_row(store: Any, ledger: Ledger) -> None:
    """Without a failover around it, ``ResilienceMiddleware`` refuses the call itself."""
    world, log = World.make(), CallLog()
    spend = RunBudget(0.01, ledger=ledger)
    model = RecordingChatModel(model_name=PRIMARY, reply=support_reply, log=log)
    retrier = Retrier(max_retries=1, sleep=lambda _s: None, asleep=_no_wait)
    agent = support_agent(
        world,
        model,
        support_tools(world),
        [ResilienceMiddleware(retrier=retrier, run_budget=spend)],
    )
    tenant, run_id = world.tenants[0], f"spent-{world.tenants[0]}"
    spend.charge(run_id, 0.01)  # an earlier step of the run spent it all
    config = {
        "configurable": {"thread_id": run_id},
        "metadata": {"tenant_id": tenant, "user_id": "alice0", "run_id": run_id},
    }
    with pytest.raises(BudgetExceeded) as refused:
        agent.invoke({"messages": [{"role": "user", "content": "Thanks!"}]}, config)
    assert refused.value.scope == f"run {run_id}" and not log.calls
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="refusal")
    assert (row["run_id"], row["model"], row["extra"]) == (run_id, PRIMARY, {"limit": "max_usd"})


def test_a_budget_stop_is_not_a_probe_of_a_provider_that_is_down(store: Any) -> None:
    """A half-open circuit lets one probe through; a budget's stop message answers it without
    any provider call, so it must not close the circuit (nor use up the probe)."""
    world, log = World.make(), CallLog()
    outage = Outage(0, 1_000)
    breaker = CircuitBreaker(min_calls=1, consecutive=1, open_s=60, clock=outage.clock)
    breaker.record(PRIMARY, UpstreamError("503"))
    outage.turn = 30  # past probe_after_s: the next call is the probe
    assert breaker.state(PRIMARY) == "half_open"
    primary = FlakyRecordingModel(
        model_name=PRIMARY, reply=support_reply, log=log, outage=outage, faults=CallLog()
    )
    backup = RecordingChatModel(model_name=BACKUP, reply=support_reply, log=log)
    budget = Budget(store, max_tokens={"thread": 50}, max_output_tokens=OUTPUT_CAP)
    agent = support_agent(
        world,
        primary,
        support_tools(world),
        [FailoverMiddleware({BACKUP: backup}, breaker=breaker), BudgetMiddleware(budget)],
    )
    config = {
        "configurable": {"thread_id": f"stop-{world.tenants[0]}"},
        "metadata": {"tenant_id": world.tenants[0], "user_id": "alice0"},
    }
    out = agent.invoke({"messages": [{"role": "user", "content": "Thanks!"}]}, config)
    assert str(out["messages"][-1].content).startswith(BUDGET_STOP) and not log.calls
    assert breaker.state(PRIMARY) == "half_open"
    assert breaker.allow(PRIMARY)  # the probe is still there for a real call
