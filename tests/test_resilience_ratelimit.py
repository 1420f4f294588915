"""Shared rate limits: token buckets in PostgreSQL that every process draws on."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from graphthrift import Store, diagnostics
from graphthrift.errors import RateLimited
from graphthrift.resilience import RateLimit, SharedRateLimiter


def test_requests_per_minute_are_shared_between_limiters(store: Store, tenant: str) -> None:
    limits = {"gpt-4o-mini": RateLimit(rpm=3)}
    one = SharedRateLimiter(store, limits, max_wait_s=0)
    other = SharedRateLimiter(store, limits, max_wait_s=0)  # another process
    one.acquire("gpt-4o-mini", tenant_id=tenant)
    other.acquire("gpt-4o-mini", tenant_id=tenant)
    one.acquire("openai:gpt-4o-mini", tenant_id=tenant)  # provider prefix: same limit
    with pytest.raises(RateLimited) as err:
        other.acquire("gpt-4o-mini", tenant_id=tenant)
    shed = err.value
    assert shed.limit == f"rpm|gpt-4o-mini|{tenant}"
    assert shed.needed == 1 and shed.available < 1 and shed.retry_after_s > 0
    # another tenant has its own bucket
    other.acquire("gpt-4o-mini", tenant_id=tenant + "-b")


def test_tokens_are_reserved_and_settled_with_real_usage(store: Store, tenant: str) -> None:
    limiter = SharedRateLimiter(store, {"*": RateLimit(tpm=2_500)}, max_wait_s=0)
    first = limiter.acquire("gpt-4o", tokens=1_000, tenant_id=tenant)
    limiter.acquire("gpt-4o", tokens=1_000, tenant_id=tenant)
    with pytest.raises(RateLimited) as err:
        limiter.acquire("gpt-4o", tokens=1_000, tenant_id=tenant)
    assert err.value.needed == 1_000 and err.value.available < 1_000
    limiter.settle(first, used_tokens=200)  # 800 reserved tokens come back
    limiter.acquire("gpt-4o", tokens=1_000, tenant_id=tenant)


def test_both_buckets_or_neither(store: Store, tenant: str) -> None:
    limiter = SharedRateLimiter(store, {"m": RateLimit(rpm=10, tpm=1_000)}, max_wait_s=0)
    limiter.acquire("m", tokens=900, tenant_id=tenant)
    for _ in range(3):  # refused by tpm: must not eat the rpm bucket
        with pytest.raises(RateLimited):
            limiter.acquire("m", tokens=900, tenant_id=tenant)
    for _ in range(9):
        limiter.acquire("m", tokens=1, tenant_id=tenant)


def test_a_call_larger_than_the_limit_is_refused_at_once(store: Store, tenant: str) -> None:
    limiter = SharedRateLimiter(store, {"m": RateLimit(tpm=1_000)}, max_wait_s=30)
    with pytest.raises(RateLimited) as err:
        limiter.acquire("m", tokens=5_000, tenant_id=tenant)
    assert err.value.waited_s == 0 and err.value.needed == 5_000


def test_caller_waits_for_room_within_the_bound(store: Store, tenant: str) -> None:
    limiter = SharedRateLimiter(store, {"m": RateLimit(rpm=120)}, max_wait_s=0)
    for _ in range(120):
        limiter.acquire("m", tenant_id=tenant)
    waiting = SharedRateLimiter(store, {"m": RateLimit(rpm=120)}, max_wait_s=30)
    waiting.acquire("m", tenant_id=tenant)  # the bucket refills 2 per second: it gets one


def test_batch_traffic_leaves_room_for_interactive(store: Store, tenant: str) -> None:
    limiter = SharedRateLimiter(store, {"m": RateLimit(rpm=10)}, max_wait_s=0, batch_reserve=0.5)
    batch = 0
    while True:
        try:
            limiter.acquire("m", tenant_id=tenant, priority="batch")
        except RateLimited:
            break
        batch += 1
    interactive = 0
    while True:
        try:
            limiter.acquire("m", tenant_id=tenant, priority="interactive")
        except RateLimited:
            break
        interactive += 1
    assert batch == 5 and interactive == 5


def test_unlimited_model_passes_and_store_down_fails_open(tenant: str) -> None:
    store = Store.__new__(Store)
    store.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    store.display_url = "postgresql://127.0.0.1:1/none"
    store._secrets = ()  # what Store.__init__ would set for a URL without secrets
    limiter = SharedRateLimiter(store, {"m": RateLimit(rpm=1)}, max_wait_s=0)
    before = diagnostics.get("rate_limit_store_failure")
    limiter.acquire("m", tenant_id=tenant)
    limiter.acquire("m", tenant_id=tenant)
    assert diagnostics.get("rate_limit_store_failure") == before + 2
    held = limiter.acquire("other-model", tokens=10, tenant_id=tenant)
    assert held.token_key is None


def test_bad_limits_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="rpm"):
        RateLimit(rpm=0)
    with pytest.raises(ValueError, match="at least one"):
        SharedRateLimiter(store, {})


def _agent(limiter: SharedRateLimiter) -> object:
    from langchain.agents import create_agent

    from graphthrift.middleware import ResilienceMiddleware

    from fakes import usage_model

    model = usage_model("ok", input_tokens=120, output_tokens=9)
    return create_agent(model, tools=[], middleware=[ResilienceMiddleware(rate_limiter=limiter)])


def test_middleware_sheds_calls_over_the_shared_rpm(store: Store, tenant: str) -> None:
    agent: object = _agent(
        SharedRateLimiter(store, {"gpt-4o-mini": RateLimit(rpm=2)}, max_wait_s=0)
    )
    config = {"metadata": {"tenant_id": tenant}}
    for _ in range(2):
        agent.invoke({"messages": [("user", "hi")]}, config)  # type: ignore[attr-defined]
    with pytest.raises(RateLimited):
        agent.invoke({"messages": [("user", "hi")]}, config)  # type: ignore[attr-defined]


def test_middleware_settles_tokens_with_real_usage(store: Store, tenant: str) -> None:
    """Each call reserves ~1,040 tokens (input + 1,024 capped output) but uses 129: without
    settling, the third call would not fit in 3,000 tokens per minute."""
    limiter = SharedRateLimiter(store, {"gpt-4o-mini": RateLimit(tpm=3_000)}, max_wait_s=0)
    agent: object = _agent(limiter)
    config = {"metadata": {"tenant_id": tenant}}
    for _ in range(3):
        agent.invoke({"messages": [("user", "hi")]}, config)  # type: ignore[attr-defined]


def test_shed_calls_are_booked(store: Store, ledger: object, tenant: str) -> None:
    limiter = SharedRateLimiter(
        store,
        {"m": RateLimit(rpm=1)},
        max_wait_s=0,
        ledger=ledger,  # type: ignore[arg-type]
    )
    limiter.acquire("m", tenant_id=tenant)
    with pytest.raises(RateLimited):
        limiter.acquire("m", tenant_id=tenant, priority="batch")
    ledger.flush()  # type: ignore[attr-defined]
    (row,) = ledger.records(tenant_id=tenant, kind="rate_limited")  # type: ignore[attr-defined]
    assert row["model"] == "m" and row["success"] is False and row["cost_usd"] == 0
    assert row["extra"]["priority"] == "batch" and row["extra"]["limit"] == f"rpm|m|{tenant}"


def test_batch_waits_while_interactive_demand_is_queued(store: Store, tenant: str) -> None:
    """Small batch calls must not starve a large interactive one: while an interactive caller
    waits for room in a bucket (in any process), batch calls on it wait too."""
    import threading

    limits = {"m": RateLimit(tpm=1_000)}
    batch = SharedRateLimiter(store, limits, max_wait_s=0, batch_reserve=0.0)
    waiting = SharedRateLimiter(store, limits, max_wait_s=60, batch_reserve=0.0)
    held = batch.acquire("m", tokens=600, tenant_id=tenant)  # 400 left
    got: list[object] = []
    worker = threading.Thread(
        target=lambda: got.append(waiting.acquire("m", tokens=900, tenant_id=tenant))
    )
    worker.start()
    for _ in range(600):  # until the interactive caller is queued (no timing asserted)
        if batch.queued("m", tenant_id=tenant):
            break
        threading.Event().wait(0.05)
    assert batch.queued("m", tenant_id=tenant) == 1
    with pytest.raises(RateLimited) as err:  # 100 would fit in 400, but an interactive waits
        batch.acquire("m", tokens=100, tenant_id=tenant, priority="batch")
    assert err.value.limit == f"tpm|m|{tenant}"
    batch.acquire("m", tokens=100, tenant_id=tenant)  # interactive callers are not held back
    batch.settle(held, used_tokens=0)  # room for the queued 900
    worker.join(60)
    assert len(got) == 1 and batch.queued("m", tenant_id=tenant) == 0
    batch.settle(got[0], used_tokens=0)  # type: ignore[arg-type]
    batch.acquire("m", tokens=100, tenant_id=tenant, priority="batch")
