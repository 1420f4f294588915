"""graphthrift.Budget core: limits, atomic reservations, settlement, ladder, failures."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text

from graphthrift import diagnostics
from graphthrift.budget import Budget, Reservation, Shortfall
from graphthrift.errors import BudgetExceeded, StoreUnavailable, UnknownModelPrice
from graphthrift.ledger import LedgerRecord, default_price_book
from graphthrift.store import Store

MODEL = "gpt-4o-mini"
PRICE = default_price_book().price(MODEL)


def msgs(n_words: int = 5) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(["word"] * n_words)}]


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_request_usd": 0},
        {"max_request_usd": -1.0},
        {"max_request_usd": float("inf")},
        {"max_input_tokens": 0},
        {"max_output_tokens": -5},
        {"max_output_tokens": 1.5},
        {"max_tool_calls_per_step": 0},
        {"max_usd": {"tenant": 0}},
        {"max_usd": {"tenant": -2}},
        {"max_tokens": {"run": 0}},
        {"max_usd": {"planet": 1.0}},
        {"ladder": ["compress", "teleport"]},
        {"ladder": ["end", "end"]},
    ],
)
def test_bad_limits_are_refused_with_a_clear_error(store: Store, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Budget(store, **kwargs)


def test_bool_and_text_limits_are_type_errors(store: Store) -> None:
    with pytest.raises(TypeError):
        Budget(store, max_request_usd=True)
    with pytest.raises(TypeError):
        Budget(store, max_usd={"tenant": "5"})


def test_scope_limits_need_a_store() -> None:
    with pytest.raises(ValueError, match="need a store"):
        Budget(max_usd={"tenant": 1.0})


def test_cost_budget_refuses_unknown_model(store: Store, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 1.0})
    with pytest.raises(UnknownModelPrice) as info:
        budget.reserve("acme-private-llm-v9", msgs(), tags={"tenant_id": tenant})
    assert info.value.model == "acme-private-llm-v9"
    # a token budget needs no price
    tokens_only = Budget(store, max_tokens={"tenant": 10_000})
    r = tokens_only.reserve("acme-private-llm-v9", msgs(), tags={"tenant_id": tenant})
    assert r.usd == 0.0 and r.tokens > 0
    tokens_only.settle(r, input_tokens=5, output_tokens=5)


# -- reserve and settle --------------------------------------------------------------------


def test_reserve_estimates_input_plus_max_output(store: Store, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 1.0}, max_output_tokens=200)
    r = budget.reserve(MODEL, msgs(50), tags={"tenant_id": tenant})
    assert r.estimate.output_tokens == 200
    assert r.estimate.input_tokens > 50
    assert PRICE is not None
    assert r.usd == pytest.approx(PRICE.cost(r.estimate.input_tokens, 200))
    held = budget.usage({"tenant_id": tenant})["tenant"]
    assert held["reserved_usd"] == pytest.approx(r.usd)
    budget.settle(r, input_tokens=60, output_tokens=10)
    after = budget.usage({"tenant_id": tenant})["tenant"]
    assert after["reserved_usd"] == 0.0
    assert after["spent_usd"] == pytest.approx(PRICE.cost(60, 10))
    assert after["spent_tokens"] == 70
    budget.settle(r, input_tokens=60, output_tokens=10)  # settling twice is a no-op
    assert budget.usage({"tenant_id": tenant})["tenant"]["spent_tokens"] == 70


def test_settle_with_a_ledger_record(store: Store, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 100_000})
    r = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    budget.settle(r, record=LedgerRecord(model=MODEL, input_tokens=11, output_tokens=7))
    assert budget.usage({"tenant_id": tenant})["tenant"]["spent_tokens"] == 18


def test_refusal_names_limit_spent_and_scope(store: Store, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 1_000}, max_output_tokens=400)
    first = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    budget.settle(first, input_tokens=300, output_tokens=400)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    err = info.value
    assert err.limit_name == "max_tokens"
    assert err.limit == 1_000
    assert err.spent == 700
    assert err.scope.startswith(f"tenant:{tenant}@")
    assert err.requested > 400


def test_a_thread_id_another_tenant_uses_is_another_thread(store: Store, tenant: str) -> None:
    """Thread ids such as "1" recur across tenants: one tenant's spend on its thread "1"
    never refuses another tenant's call on its own thread "1"; a feature spans tenants."""
    budget = Budget(store, max_tokens={"thread": 1_000}, max_output_tokens=400)
    thread = f"1-{uuid.uuid4().hex[:6]}"
    mine, theirs = (
        {"tenant_id": tenant, "thread_id": thread},
        {
            "tenant_id": tenant + "-other",
            "thread_id": thread,
        },
    )
    first = budget.reserve(MODEL, msgs(), tags=mine)
    budget.settle(first, input_tokens=300, output_tokens=400)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(MODEL, msgs(), tags=mine)
    assert tenant in info.value.scope and thread in info.value.scope
    other = budget.reserve(MODEL, msgs(), tags=theirs)  # the other tenant's own thread
    assert budget.usage(theirs)["thread"]["reserved_tokens"] == other.tokens
    assert budget.usage(mine)["thread"]["spent_tokens"] == 700
    budget.release(other)
    untenanted = {"thread_id": thread}  # without a tenant: the thread id alone, as before
    assert budget.usage(untenanted)["thread"]["spent_tokens"] == 0


def test_all_scopes_or_none(store: Store, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 100_000, "run": 500}, max_output_tokens=400)
    tags = {"tenant_id": tenant, "run_id": uuid.uuid4().hex}
    r = budget.reserve(MODEL, msgs(), tags=tags)
    result = budget.try_reserve(MODEL, msgs(), tags=tags)  # the run scope refuses
    assert isinstance(result, Shortfall) and result.scope_kind == "run"
    # the tenant scope kept nothing from the refused attempt
    assert budget.usage(tags)["tenant"]["reserved_tokens"] == r.tokens
    budget.release(r)
    assert budget.usage(tags)["tenant"]["reserved_tokens"] == 0


def test_request_and_step_limits(store: Store) -> None:
    budget = Budget(max_request_usd=0.0001, max_input_tokens=30)
    short = budget.try_reserve(MODEL, msgs(100))
    assert isinstance(short, Shortfall) and short.limit_name == "max_input_tokens"
    short = budget.try_reserve("gpt-4o", msgs(10), max_output_tokens=4000)
    assert isinstance(short, Shortfall) and short.limit_name == "max_request_usd"
    assert budget.allowed_tool_calls(5) == 5
    assert Budget(max_tool_calls_per_step=2).allowed_tool_calls(5) == 2


def test_budgets_survive_a_restart(store: Store, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 1.0})
    r = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    budget.settle(r, input_tokens=1000, output_tokens=1000)
    reopened = Store(store.display_url if not store.embedded else None, home=store.home)
    try:
        again = Budget(reopened, max_usd={"tenant": 1.0})
        spent = again.usage({"tenant_id": tenant})["tenant"]["spent_usd"]
        assert spent == pytest.approx(PRICE.cost(1000, 1000))  # type: ignore[union-attr]
    finally:
        reopened.close()


def test_expired_reservations_are_reclaimed(store: Store, tenant: str) -> None:
    budget = Budget(
        store, max_tokens={"tenant": 1_500}, max_output_tokens=1000, reservation_ttl=0.05
    )
    budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})  # the "crashed" process
    time.sleep(0.2)
    r = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})  # reclaims, then fits
    assert budget.usage({"tenant_id": tenant})["tenant"]["reserved_tokens"] == r.tokens


# -- UTC days --------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_days_are_utc_and_reset_at_midnight(store: Store, tenant: str) -> None:
    clock = Clock(datetime(2030, 1, 1, 23, 59, 59, tzinfo=UTC))
    budget = Budget(store, max_tokens={"tenant": 1_000}, max_output_tokens=900, clock=clock)
    r = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    clock.now += timedelta(seconds=2)  # settled after midnight: still books to its own day
    budget.settle(r, input_tokens=50, output_tokens=900)
    day1 = budget.usage({"tenant_id": tenant}, day=date(2030, 1, 1))["tenant"]
    assert day1["spent_tokens"] == 950 and day1["reserved_tokens"] == 0
    r2 = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})  # a fresh day
    assert r2.scopes[0].day == date(2030, 1, 2)
    # 04:30 at UTC+05:00 is still the previous UTC day; the clock may jump backwards
    clock.now = datetime(2030, 1, 2, 4, 30, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    assert "@2030-01-01" in info.value.scope
    budget.release(r2)


# -- concurrency: the overspend bound --------------------------------------------------------


def test_sixteen_concurrent_runs_never_overspend(store: Store, tenant: str) -> None:
    limit = 0.002
    budget = Budget(store, max_usd={"tenant": limit}, max_output_tokens=300)
    rng = random.Random(7)
    sizes = [rng.randint(5, 200) for _ in range(16 * 12)]

    async def run(worker: int) -> int:
        calls = 0
        for i in range(12):
            words = sizes[worker * 12 + i]
            result = await budget.atry_reserve(
                MODEL, msgs(words), tags={"tenant_id": tenant, "run_id": f"{tenant}-{worker}"}
            )
            if isinstance(result, Shortfall):
                continue
            await asyncio.sleep(0)  # the "model call"
            await budget.asettle(
                result,
                input_tokens=result.estimate.input_tokens,
                output_tokens=rng.randint(0, result.estimate.output_tokens),
            )
            calls += 1
        return calls

    async def main() -> list[int]:
        try:
            return await asyncio.gather(*(run(w) for w in range(16)))
        finally:
            await store.async_engine.dispose()  # its connections belong to this loop

    calls = asyncio.run(main())
    assert sum(calls) > 0
    held = budget.usage({"tenant_id": tenant})["tenant"]
    max_reservation = PRICE.cost(max(sizes) * 2 + 10, 300)  # type: ignore[union-attr]
    assert held["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
    assert held["spent_usd"] <= limit + max_reservation
    assert held["spent_usd"] <= limit + 1e-12  # actual usage never exceeded reservations


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(st.integers(1, 300), st.floats(0.0, 1.5), st.booleans()), min_size=1, max_size=25
    ),
    limit=st.integers(200, 3000),
)
def test_spent_never_passes_limit_by_more_than_one_reservation(
    store: Store, ops: list[tuple[int, float, bool]], limit: int
) -> None:
    """Interleaved reserves and settles (actual usage up to 1.5x the reservation)."""
    tags = {"tenant_id": f"h-{uuid.uuid4().hex[:10]}"}
    budget = Budget(store, max_tokens={"tenant": limit}, max_output_tokens=100)
    open_: list[Reservation] = []
    biggest = 0
    for words, actual_ratio, settle_now in ops:
        result = budget.try_reserve(MODEL, msgs(words), tags=tags)
        if isinstance(result, Reservation):
            open_.append(result)
            biggest = max(biggest, result.tokens)
        if settle_now and open_:
            r = open_.pop(0)
            used = int(r.tokens * actual_ratio)
            # over-use stops once the limit is passed (a provider stops at max_tokens)
            budget.settle(
                r,
                input_tokens=r.estimate.input_tokens,
                output_tokens=max(used - r.estimate.input_tokens, 0),
            )
        held = budget.usage(tags)["tenant"]
        assert held["spent_tokens"] + held["reserved_tokens"] <= limit + biggest * len(ops)
    for r in open_:
        budget.settle(r, input_tokens=r.estimate.input_tokens, output_tokens=0)
    held = budget.usage(tags)["tenant"]
    assert held["reserved_tokens"] == 0
    # every admitted reservation fitted; only over-use beyond reservations can pass the limit
    over_use = sum(1 for _, ratio, _ in ops if ratio > 1.0)
    if over_use == 0:
        assert held["spent_tokens"] <= limit


# -- fail open / fail closed -----------------------------------------------------------------


@pytest.fixture
def doomed_store(store: Store):  # type: ignore[no-untyped-def]
    """A Store on a scratch database that the test can make unreachable."""
    name = f"gt_budget_{uuid.uuid4().hex[:8]}"
    admin = create_engine(store.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(store.url).set(database=name).render_as_string(hide_password=False)
    doomed = Store(url, home=store.home / name)

    def kill() -> None:
        doomed.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    yield doomed, kill
    doomed.close()
    kill()
    admin.dispose()


def test_fail_open_counts_the_failure(doomed_store, tenant: str) -> None:  # type: ignore[no-untyped-def]
    doomed, kill = doomed_store
    budget = Budget(doomed, max_usd={"tenant": 0.0001})
    kill()
    before = diagnostics.get("budget_store_failure")
    r = budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})
    assert not r.backed
    budget.settle(r, input_tokens=1, output_tokens=1)
    assert diagnostics.get("budget_store_failure") == before + 1


def test_fail_closed_raises(doomed_store, tenant: str) -> None:  # type: ignore[no-untyped-def]
    doomed, kill = doomed_store
    budget = Budget(doomed, max_usd={"tenant": 1.0}, fail_closed=True)
    kill()
    with pytest.raises(StoreUnavailable):
        budget.reserve(MODEL, msgs(), tags={"tenant_id": tenant})

    async def go() -> None:
        try:
            await budget.areserve(MODEL, msgs(), tags={"tenant_id": tenant})
        finally:
            await doomed.async_engine.dispose()

    with pytest.raises(StoreUnavailable):
        asyncio.run(go())


# -- the degradation ladder ------------------------------------------------------------------


def _exhaust(budget: Budget, tags: dict, input_tokens: int) -> None:
    r = budget.reserve(MODEL, input_tokens=1, max_output_tokens=1, tags=tags)
    budget.settle(r, input_tokens=input_tokens, output_tokens=0)


def test_ladder_compresses_first(store: Store, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 1_000}, max_output_tokens=100)
    tags = {"tenant_id": tenant}
    _exhaust(budget, tags, 700)
    long = msgs(400)
    done = budget.preflight(MODEL, long, tags=tags, compress=lambda m: msgs(20))
    assert done.outcome == "proceed" and done.steps == ["compress"]
    assert done.messages == msgs(20)
    assert done.reservation is not None
    budget.release(done.reservation)


def test_ladder_switches_to_cheaper_model_for_cost(store: Store, tenant: str) -> None:
    budget = Budget(store, max_usd={"tenant": 0.01}, max_output_tokens=500)
    tags = {"tenant_id": tenant}
    r = budget.reserve("gpt-4o", input_tokens=2000, max_output_tokens=1, tags=tags)
    budget.settle(r, input_tokens=2500, output_tokens=0)  # 0.00625 spent
    done = budget.preflight("gpt-4o", msgs(300), tags=tags, cheaper_model=MODEL)
    assert done.outcome == "proceed" and done.model == MODEL
    assert done.steps == ["cheaper_model"]


def test_ladder_ends_cleanly_then_hard_stops(store: Store, tenant: str) -> None:
    tags = {"tenant_id": tenant}
    ends = Budget(store, max_tokens={"tenant": 500}, max_output_tokens=100)
    _exhaust(ends, tags, 480)
    done = ends.preflight(MODEL, msgs(10), tags=tags, compress=lambda m: m)
    # compressing cannot help when even the output reservation does not fit
    assert done.outcome == "end" and done.steps == ["end"]
    assert done.shortfall is not None and "max_tokens" in done.shortfall.message()
    hard = Budget(store, max_tokens={"tenant": 500}, max_output_tokens=100, ladder=())
    with pytest.raises(BudgetExceeded):
        hard.preflight(MODEL, msgs(10), tags=tags)


def test_interrupt_approval_forces_the_call(store: Store, tenant: str) -> None:
    tags = {"tenant_id": tenant}
    budget = Budget(
        store, max_tokens={"tenant": 500}, max_output_tokens=100, ladder=("interrupt", "end")
    )
    _exhaust(budget, tags, 480)
    asked: list[Shortfall] = []
    done = budget.preflight(MODEL, msgs(10), tags=tags, interrupt=lambda s: asked.append(s) or True)
    assert done.outcome == "proceed" and done.reservation is not None
    assert done.reservation.forced and asked[0].limit_name == "max_tokens"
    budget.release(done.reservation)
    refused = budget.preflight(MODEL, msgs(10), tags=tags, interrupt=lambda s: False)
    assert refused.outcome == "end"


def test_async_preflight_accepts_async_callables(store: Store, tenant: str) -> None:
    budget = Budget(store, max_tokens={"tenant": 1_000}, max_output_tokens=100)
    tags = {"tenant_id": tenant}
    _exhaust(budget, tags, 700)

    async def summarize(messages: list) -> list:
        return msgs(5)

    async def go():  # type: ignore[no-untyped-def]
        try:
            return await budget.apreflight(MODEL, msgs(400), tags=tags, summarize=summarize)
        finally:
            await store.async_engine.dispose()

    done = asyncio.run(go())
    assert done.steps == ["summarize"] and done.outcome == "proceed"
