"""Retry budgets and backoff: retry what may succeed later, within per-call and shared caps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import openai
import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from sqlalchemy import text

from graphthrift import Store
from graphthrift.errors import RetryBudgetExhausted
from graphthrift.middleware import ResilienceMiddleware
from graphthrift.resilience import Backoff, Retrier, RetryBudget, SingleFlight, retry_after_of

from fakes import flaky_model

_REQ = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def rate_limited(retry_after: str | None = None) -> openai.RateLimitError:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return openai.RateLimitError(
        "rate limited", response=httpx.Response(429, headers=headers, request=_REQ), body=None
    )


def server_error() -> openai.InternalServerError:
    return openai.InternalServerError("boom", response=httpx.Response(500, request=_REQ), body=None)


def bad_request() -> openai.BadRequestError:
    return openai.BadRequestError("bad", response=httpx.Response(400, request=_REQ), body=None)


class Script:
    """A provider that raises the queued errors, then answers; counts every call."""

    def __init__(self, *errors: BaseException, answer: str = "ok") -> None:
        self.errors = list(errors)
        self.answer = answer
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


def test_retry_after_is_read_from_the_real_client_errors() -> None:
    assert retry_after_of(rate_limited("7")) == 7.0
    ms = openai.RateLimitError(
        "x",
        response=httpx.Response(429, headers={"retry-after-ms": "1500"}, request=_REQ),
        body=None,
    )
    assert retry_after_of(ms) == 1.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (retry_after_of(rate_limited(later)) or 0) <= 30
    assert retry_after_of(server_error()) is None


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    rng = random.Random(7)
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)):
        delays = [backoff.delay(retry, None, rng) for _ in range(200)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling / 2  # spread, not fixed
        assert min(d for d in delays if d is not None) < ceiling / 2
    assert all((backoff.delay(1, 5.0, rng) or 0) >= 5.0 for _ in range(50))
    assert Backoff(max_retry_after_s=60).delay(1, 120.0, rng) is None


def test_rate_limit_is_retried_after_retry_after() -> None:
    waits: list[float] = []
    provider = Script(rate_limited("3"))
    assert Retrier(sleep=waits.append).call(provider) == "ok"
    assert provider.calls == 2
    assert len(waits) == 1 and waits[0] >= 3.0


def test_timeout_and_upstream_are_retried_bad_request_is_not() -> None:
    waits: list[float] = []
    provider = Script(openai.APITimeoutError(request=_REQ), server_error())
    assert Retrier(sleep=waits.append).call(provider) == "ok"
    assert provider.calls == 3
    failing = Script(bad_request())
    with pytest.raises(openai.BadRequestError):
        Retrier(sleep=waits.append).call(failing)
    assert failing.calls == 1


def test_retries_per_call_are_capped() -> None:
    provider = Script(*(server_error() for _ in range(10)))
    with pytest.raises(openai.InternalServerError):
        Retrier(max_retries=2, sleep=lambda _: None).call(provider)
    assert provider.calls == 3


def test_retry_share_of_a_tenant_is_capped_across_processes(store: Store, tenant: str) -> None:
    tags = {"tenant_id": tenant}

    def budget() -> RetryBudget:
        return RetryBudget(store, max_share=0.25, min_retries=0, window_s=300)

    retrier = Retrier(max_retries=5, budget=budget(), sleep=lambda _: None)
    for _ in range(8):  # 8 healthy calls earn 2 retries
        retrier.call(Script(), tags=tags)
    broken = Script(*(server_error() for _ in range(10)))
    with pytest.raises(RetryBudgetExhausted) as err:
        retrier.call(broken, tags=tags)
    assert broken.calls == 3  # the first try and the 2 retries the budget allowed
    refused = err.value
    assert (refused.scope, refused.retries, refused.calls, refused.allowed) == (
        f"tenant_id:{tenant}",
        2,
        9,
        2,
    )
    assert refused.error_kind == "upstream"
    assert isinstance(refused.__cause__, openai.InternalServerError)
    # another process, same store: the tenant's budget is already spent
    other = Retrier(max_retries=5, budget=budget(), sleep=lambda _: None)
    elsewhere = Script(rate_limited("1"))
    with pytest.raises(RetryBudgetExhausted):
        other.call(elsewhere, tags=tags)
    assert elsewhere.calls == 1


def test_budget_window_slides(store: Store, tenant: str) -> None:
    tags = {"tenant_id": tenant}
    budget = RetryBudget(store, max_share=0.0, min_retries=1, window_s=60)
    retrier = Retrier(budget=budget, sleep=lambda _: None)
    assert retrier.call(Script(server_error()), tags=tags) == "ok"
    with pytest.raises(RetryBudgetExhausted):
        retrier.call(Script(server_error()), tags=tags)
    with store.connect() as conn:  # the window's buckets are now two minutes old
        conn.execute(
            text("UPDATE graphthrift_retry_window SET bucket = bucket - 24 WHERE scope = :s"),
            {"s": f"tenant_id:{tenant}"},
        )
    assert retrier.call(Script(server_error()), tags=tags) == "ok"


def test_run_budget_is_separate_from_tenant_budget(store: Store, tenant: str) -> None:
    budget = RetryBudget(store, max_share=0.0, min_retries=1, window_s=300, scopes=("run_id",))
    retrier = Retrier(budget=budget, sleep=lambda _: None)
    assert retrier.call(Script(server_error()), tags={"run_id": f"{tenant}-r1"}) == "ok"
    with pytest.raises(RetryBudgetExhausted) as err:
        retrier.call(Script(server_error()), tags={"run_id": f"{tenant}-r1"})
    assert err.value.scope == f"run_id:{tenant}-r1"
    assert retrier.call(Script(server_error()), tags={"run_id": f"{tenant}-r2"}) == "ok"


def test_async_retries_use_the_async_sleep() -> None:
    import asyncio

    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    attempts: list[int] = []

    async def provider() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise rate_limited("2")
        return "async ok"

    retrier = Retrier(asleep=fake_sleep)
    assert asyncio.run(retrier.acall(provider)) == "async ok"
    assert len(attempts) == 3 and len(waits) == 2 and all(w >= 2 for w in waits)


def test_middleware_retries_a_rate_limited_model_within_budget(store: Store, tenant: str) -> None:
    from fakes import RateLimitError

    model = flaky_model(RateLimitError("429"), text="Recovered.")
    waits: list[float] = []
    retrier = Retrier(
        max_retries=2,
        budget=RetryBudget(store, min_retries=1, window_s=300),
        sleep=waits.append,
    )
    agent = create_agent(
        model, tools=[], middleware=[ResilienceMiddleware(SingleFlight(store), retrier=retrier)]
    )
    out: Any = agent.invoke(
        {"messages": [HumanMessage("hello")]}, {"metadata": {"tenant_id": tenant}}
    )
    assert out["messages"][-1].content == "Recovered."
    assert retrier.retries == 1 and len(waits) == 1


def test_retries_and_refusals_are_booked(store: Store, tenant: str) -> None:
    from graphthrift import Ledger

    ledger = Ledger(store, flush_interval=0.05)
    tags = {"tenant_id": tenant, "run_id": f"{tenant}-run"}
    budget = RetryBudget(store, max_share=0.0, min_retries=1, window_s=300)
    retrier = Retrier(budget=budget, sleep=lambda _: None, ledger=ledger)
    assert retrier.call(Script(rate_limited("1")), tags=tags) == "ok"
    with pytest.raises(RetryBudgetExhausted):
        retrier.call(Script(server_error()), tags=tags)
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="retry")
    ledger.close()
    assert [(r["error_type"], r["success"], r["attempt"]) for r in rows] == [
        ("rate_limit", True, 2),
        ("upstream", False, 2),
    ]
    assert rows[0]["extra"]["retry_after_s"] == 1.0 and rows[0]["cost_usd"] == 0
    assert rows[1]["extra"]["refused"] == f"run_id:{tenant}-run"
    assert all(r["run_id"] == f"{tenant}-run" for r in rows)
