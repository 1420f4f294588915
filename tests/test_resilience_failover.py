"""Circuit breakers and cost-aware failover."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage

from graphthrift import Ledger, Store
from graphthrift.errors import ConfigError, NoCandidateLeft
from graphthrift.middleware import FailoverMiddleware
from graphthrift.resilience import CircuitBreaker, Failover

from fakes import RateLimitError, UpstreamError, flaky_model, usage_model


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BadRequest(Exception):
    status_code = 400


class ClientTimeoutError(Exception):
    """A client-side timeout: the provider still generated, and bills, the answer."""


def test_circuit_opens_on_error_rate_and_half_opens_to_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(min_calls=4, error_rate=0.5, open_s=30, window_s=60, clock=clock)
    for error in (None, UpstreamError("503"), None, UpstreamError("503")):
        assert breaker.allow("m")
        breaker.record("m", error)
    assert breaker.state("m") == "open" and not breaker.allow("m")
    clock.now += 31
    assert breaker.state("m") == "half_open"
    assert breaker.allow("m") and not breaker.allow("m")  # one probe at a time
    breaker.record("m", None)
    assert breaker.state("m") == "closed" and breaker.allow("m")


def test_failed_probe_reopens_and_bad_requests_do_not_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(min_calls=2, error_rate=0.5, open_s=10, clock=clock)
    for _ in range(5):
        breaker.record("m", BadRequest("the caller's fault"))
    assert breaker.state("m") == "closed"  # a 400 shows the provider is up
    breaker.record("n", UpstreamError("503"))
    breaker.record("n", UpstreamError("503"))
    assert breaker.state("n") == "open"
    clock.now += 11
    assert breaker.allow("n")
    breaker.record("n", UpstreamError("still down"))
    assert breaker.state("n") == "open" and not breaker.allow("n")


def test_open_circuit_probes_early_and_backs_off_while_the_outage_lasts() -> None:
    """The first probe goes after ``probe_after_s``, not the whole ``open_s``: the dearer
    fallback stops answering soon after the primary recovers. Probes refused at once (not
    billed) keep the short wait; probes that time out (billed) double it, up to ``open_s``."""
    clock = Clock()
    breaker = CircuitBreaker(min_calls=2, error_rate=0.5, open_s=60, probe_after_s=10, clock=clock)
    breaker.record("m", UpstreamError("503"))
    breaker.record("m", UpstreamError("503"))
    assert breaker.state("m") == "open"
    clock.now += 11
    assert breaker.state("m") == "half_open" and breaker.allow("m")
    breaker.record("m", UpstreamError("still down"))  # unbilled: the wait stays 10 s
    clock.now += 11
    assert breaker.allow("m")
    breaker.record("m", ClientTimeoutError("read timed out"))  # billed: 20 s
    clock.now += 11
    assert breaker.state("m") == "open" and not breaker.allow("m")
    clock.now += 10
    assert breaker.allow("m")
    breaker.record("m", ClientTimeoutError("read timed out"))  # 40 s
    clock.now += 41
    assert breaker.allow("m")
    breaker.record("m", ClientTimeoutError("read timed out"))  # capped at open_s = 60 s
    clock.now += 59
    assert not breaker.allow("m")
    clock.now += 2
    assert breaker.allow("m")
    breaker.record("m", None)
    assert breaker.state("m") == "closed"
    breaker.record("m", UpstreamError("503"))
    breaker.record("m", UpstreamError("503"))
    clock.now += 11  # a fresh outage starts again from the short wait
    assert breaker.allow("m")
    with pytest.raises(ConfigError):
        CircuitBreaker(open_s=10, probe_after_s=11)


def test_a_caller_waits_for_the_probe_in_flight_instead_of_failing_over() -> None:
    """Right after an outage, the callers that arrive while one probe is answered wait for
    its outcome (``probe_wait_s``) instead of all paying the dearer fallback."""
    import threading

    clock = Clock()
    breaker = CircuitBreaker(
        min_calls=2, error_rate=0.5, open_s=60, probe_after_s=10, probe_wait_s=30, clock=clock
    )
    for model in ("up", "down"):
        breaker.record(model, UpstreamError("503"))
        breaker.record(model, UpstreamError("503"))
    clock.now += 11
    assert breaker.allow("up") and breaker.allow("down")  # the two probes are in flight
    answered = threading.Event()

    def probe_answers() -> None:
        answered.wait()
        breaker.record("up", None)
        breaker.record("down", UpstreamError("still down"))

    prober = threading.Thread(target=probe_answers)
    prober.start()
    answered.set()
    assert breaker.admit("up")  # the probe closed the circuit: go to the primary
    assert not breaker.admit("down")  # the probe reopened it: go to the next candidate
    prober.join()
    no_wait = CircuitBreaker(min_calls=1, error_rate=0.5, open_s=60, probe_after_s=10, clock=clock)
    no_wait.record("m", UpstreamError("503"))
    clock.now += 11
    assert no_wait.allow("m") and not no_wait.admit("m")  # probe_wait_s=0: no waiting


def test_failover_moves_on_and_skips_an_open_circuit(ledger: Ledger, tenant: str) -> None:
    breaker = CircuitBreaker(min_calls=2, error_rate=0.5, open_s=60)
    failover = Failover(["primary", "backup"], breaker=breaker, ledger=ledger)
    called: list[str] = []

    def call(model: str) -> str:
        called.append(model)
        if model == "primary":
            raise UpstreamError("503")
        return f"answer from {model}"

    tags = {"tenant_id": tenant}
    assert failover.call(call, tags=tags) == "answer from backup"
    assert failover.call(call, tags=tags) == "answer from backup"
    assert breaker.state("primary") == "open"
    called.clear()
    assert failover.call(call, tags=tags) == "answer from backup"
    assert called == ["backup"]  # the open circuit was not called
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="failover")
    assert [r["extra"]["skipped"] for r in rows] == [
        {"primary": "upstream"},
        {"primary": "upstream"},
        {"primary": "circuit open"},
    ]
    assert {r["model"] for r in rows} == {"backup"}


def test_failover_skips_candidates_over_budget(ledger: Ledger, tenant: str) -> None:
    prices = {"cheap": 0.001, "strong": 0.05}
    remaining = 0.01
    failover = Failover(["strong", "cheap"], fits=lambda m: prices[m] <= remaining, ledger=ledger)
    assert failover.call(lambda m: m, tags={"tenant_id": tenant}) == "cheap"
    broke = Failover(["strong"], fits=lambda m: False)
    with pytest.raises(NoCandidateLeft) as err:
        broke.call(lambda m: m)
    assert err.value.reasons == {"strong": "over budget"}
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="failover")
    assert row["extra"] == {"chosen": "cheap", "skipped": {"strong": "over budget"}}


def test_bad_request_is_not_failed_over() -> None:
    called: list[str] = []

    def call(model: str) -> str:
        called.append(model)
        raise BadRequest("invalid schema")

    with pytest.raises(BadRequest):
        Failover(["a", "b"]).call(call)
    assert called == ["a"]


def test_failover_middleware_in_an_agent(ledger: Ledger, tenant: str) -> None:
    primary = flaky_model(*(UpstreamError("503") for _ in range(5)), model_name="gpt-4o")
    backup = usage_model("From the backup.", model_name="gpt-4o-mini")
    agent = create_agent(
        primary,
        tools=[],
        middleware=[FailoverMiddleware({"gpt-4o-mini": backup}, ledger=ledger)],
    )
    out: Any = agent.invoke(
        {"messages": [HumanMessage("hello")]}, {"metadata": {"tenant_id": tenant}}
    )
    assert out["messages"][-1].content == "From the backup."
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="failover")
    assert row["extra"] == {"chosen": "gpt-4o-mini", "skipped": {"gpt-4o": "upstream"}}


def test_retries_inside_a_failover_stop_when_the_circuit_opens() -> None:
    """Retrying a provider the breaker has given up on only spends the retry budget: each
    failed attempt counts towards the circuit, and once it opens the failover moves on."""
    from graphthrift.resilience import Backoff, Retrier

    breaker = CircuitBreaker(min_calls=2, error_rate=0.5, open_s=60, window_s=60)
    retrier = Retrier(
        max_retries=5, backoff=Backoff(base_s=0.001, cap_s=0.001), sleep=lambda _: None
    )
    calls: list[str] = []

    def call(model: str) -> str:
        def attempt() -> str:
            calls.append(model)
            if model == "down":
                raise UpstreamError("503 provider down")
            return f"answer from {model}"

        return retrier.call(attempt)

    failover = Failover(["down", "backup"], breaker=breaker)
    assert failover.call(call) == "answer from backup"
    assert calls.count("down") == 2  # the second failure opened the circuit: no 3rd to 6th try
    assert breaker.state("down") == "open"
    assert failover.call(call) == "answer from backup"
    assert calls.count("down") == 2  # skipped while open


def test_the_last_candidate_still_retries_with_its_circuit_open() -> None:
    from graphthrift.resilience import Backoff, Retrier

    breaker = CircuitBreaker(min_calls=1, error_rate=0.5, open_s=60, window_s=60)
    retrier = Retrier(
        max_retries=3, backoff=Backoff(base_s=0.001, cap_s=0.001), sleep=lambda _: None
    )
    attempts: list[int] = []

    def call(model: str) -> str:
        def attempt() -> str:
            attempts.append(1)
            if len(attempts) < 3:
                raise UpstreamError("503")
            return "late answer"

        return retrier.call(attempt)

    assert Failover(["only"], breaker=breaker).call(call) == "late answer"
    assert len(attempts) == 3


def test_rate_limits_do_not_open_the_circuit() -> None:
    """A 429 says the provider is up and asks to come back later (``retry-after``): opening
    the circuit on it would send healthy traffic to a dearer fallback or fail it."""
    from fakes import RateLimitError

    breaker = CircuitBreaker(min_calls=2, error_rate=0.5, open_s=60, window_s=60)
    for _ in range(6):
        breaker.record("m", RateLimitError("429"))
    breaker.record("m", None)
    assert breaker.state("m") == "closed" and breaker.allow("m")
    breaker.record("m", UpstreamError("503"))
    breaker.record("m", UpstreamError("503"))
    assert breaker.state("m") == "open"


def test_the_last_candidate_is_tried_when_every_circuit_is_open() -> None:
    """Open circuits everywhere must not fail a run without one call: the breaker saves calls
    to a provider while another can answer, the last resort is still asked."""
    breaker = CircuitBreaker(min_calls=1, error_rate=0.5, open_s=60, window_s=60)
    breaker.record("a", UpstreamError("503"))
    breaker.record("b", UpstreamError("503"))
    assert breaker.state("a") == breaker.state("b") == "open"
    tried: list[str] = []

    def call(model: str) -> str:
        tried.append(model)
        return f"answer from {model}"

    assert Failover(["a", "b"], breaker=breaker).call(call) == "answer from b"
    assert tried == ["b"]


def test_consecutive_failures_open_the_circuit_after_a_healthy_stretch() -> None:
    """A provider that goes down after hours of good calls keeps a low error rate over a long
    window; consecutive failures open its circuit anyway (fail over sooner)."""
    breaker = CircuitBreaker(min_calls=4, error_rate=0.5, window_s=600, consecutive=3)
    for _ in range(50):
        breaker.record("m", None)
    breaker.record("m", UpstreamError("503"))
    breaker.record("m", UpstreamError("503"))
    assert breaker.state("m") == "closed"
    breaker.record("m", UpstreamError("503"))
    assert breaker.state("m") == "open"
    with pytest.raises(ValueError, match="consecutive"):
        CircuitBreaker(consecutive=0)


_OTHER_PROCESS = """
import os, sys
from graphthrift import Store
from graphthrift.resilience import CircuitBreaker

class UpstreamError(Exception):
    status_code = 503

store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
breaker = CircuitBreaker(store=store, min_calls=2, error_rate=0.5, open_s=30, window_s=60)
for _ in range(2):
    breaker.record(sys.argv[1], UpstreamError("503 provider down"))
print(breaker.state(sys.argv[1]), flush=True)
store.close()
"""


def test_circuit_state_is_shared_across_processes(store: Store) -> None:
    """A provider one worker found down is skipped by every worker on the store, and only one
    of them probes it when the circuit half-opens."""
    import os
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    model = f"down-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        "GRAPHTHRIFT_HOME": str(store.home),
    }
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, model],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "open"
    here = CircuitBreaker(store=store, min_calls=2, error_rate=0.5, open_s=30, window_s=60)
    assert here.state(model) == "open" and not here.allow(model)
    assert here.state("another-model") == "closed"

    later = lambda: time.time() + 31  # noqa: E731  (open_s has passed)
    one = CircuitBreaker(store=store, min_calls=2, open_s=30, window_s=60, clock=later)
    two = CircuitBreaker(store=store, min_calls=2, open_s=30, window_s=60, clock=later)
    assert one.state(model) == "half_open"
    assert one.allow(model) and not two.allow(model)  # one probe between all processes
    one.record(model, None)
    assert two.state(model) == "closed" and two.allow(model)


def test_shared_breaker_with_the_store_down_keeps_this_process_circuits() -> None:
    """A breaker must not take the graph down with its store: it fails open to the
    process's own circuits, counted."""
    from sqlalchemy import create_engine

    from graphthrift import diagnostics

    store = Store.__new__(Store)
    store.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    store.display_url = "postgresql://127.0.0.1:1/none"
    store._secrets = ()  # what Store.__init__ would set for a URL without secrets
    breaker = CircuitBreaker(store=store, min_calls=2, error_rate=0.5, open_s=60)
    before = diagnostics.get("circuit_store_failure")
    assert breaker.allow("m")
    breaker.record("m", UpstreamError("503"))
    breaker.record("m", UpstreamError("503"))
    assert breaker.state("m") == "open" and not breaker.allow("m")
    assert diagnostics.get("circuit_store_failure") >= before + 5


def _budgeted_agent(spend: Any, ledger: Ledger) -> Any:
    from graphthrift.middleware import ResilienceMiddleware
    from graphthrift.resilience import Retrier

    class _Retries(ResilienceMiddleware):
        """Inside the failover (create_agent wants distinct names)."""

    primary = flaky_model(
        ClientTimeoutError("read timed out"), model_name="gpt-4o-mini", output_tokens=80
    )
    fallback = usage_model(model_name="claude-3-haiku-20240307", output_tokens=80)
    return create_agent(
        primary,
        tools=[],
        middleware=[
            FailoverMiddleware(
                {"claude-3-haiku-20240307": fallback},
                model_name="gpt-4o-mini",
                run_budget=spend,
                max_output_tokens=80,
            ),
            _Retries(retrier=Retrier(max_retries=0), run_budget=spend, max_output_tokens=80),
        ],
    )


def test_a_timed_out_call_is_spent_and_failover_skips_what_the_run_cannot_pay(
    ledger: Ledger, tenant: str
) -> None:
    """The provider bills a call the client timed out on: the run's budget counts it, so
    the dearer fallback that would take the run over its budget is skipped."""
    from graphthrift.ledger import cost_usd
    from graphthrift.resilience import RunBudget
    from graphthrift.text.tokens import count_messages

    question = [HumanMessage("What is the answer?")]
    tokens = count_messages(question, "gpt-4o-mini").tokens
    timeout_usd = cost_usd("gpt-4o-mini", tokens, 80) or 0.0
    fallback_usd = cost_usd("claude-3-haiku-20240307", tokens, 80) or 0.0
    tight = RunBudget(1.5 * timeout_usd, ledger=ledger)  # neither a retry nor the fallback
    config = {"metadata": {"tenant_id": tenant, "run_id": "run-tight"}}
    with pytest.raises(NoCandidateLeft) as err:
        _budgeted_agent(tight, ledger).invoke({"messages": question}, config)
    assert err.value.reasons == {"gpt-4o-mini": "timeout", "claude-3-haiku-20240307": "over budget"}
    assert tight.spent("run-tight") == pytest.approx(timeout_usd)
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="timeout_billed")
    assert row["model"] == "gpt-4o-mini" and row["cost_usd"] == pytest.approx(timeout_usd)

    roomy = RunBudget(timeout_usd + 2 * fallback_usd)
    config = {"metadata": {"tenant_id": tenant, "run_id": "run-roomy"}}
    out = _budgeted_agent(roomy, ledger).invoke({"messages": question}, config)
    assert out["messages"][-1].content == "The answer is 42."
    assert roomy.spent("run-roomy") > timeout_usd  # the fallback's answer is charged too


def test_a_retry_that_would_break_the_run_budget_is_refused() -> None:
    from graphthrift.errors import BudgetExceeded
    from graphthrift.middleware import ResilienceMiddleware
    from graphthrift.resilience import Retrier, RunBudget

    spend = RunBudget(1e-9)
    spend.charge("run-spent", 1.0)
    model = flaky_model(ClientTimeoutError("read timed out"), model_name="gpt-4o-mini")
    agent = create_agent(
        model,
        tools=[],
        middleware=[ResilienceMiddleware(retrier=Retrier(max_retries=2), run_budget=spend)],
    )
    with pytest.raises(BudgetExceeded) as err:
        agent.invoke({"messages": [HumanMessage("hi")]}, {"metadata": {"run_id": "run-spent"}})
    assert err.value.scope == "run run-spent"


def test_when_failover_is_over_budget_the_cheaper_candidate_gets_a_second_chance() -> None:
    """The primary's retries ran out on a transient error and the dearer fallback would break
    the run's budget: the primary, which still fits, is tried once more instead of failing."""
    failover = Failover(["cheap", "dear"], fits=lambda m: m == "cheap")
    attempts: list[str] = []

    def call(model: str) -> str:
        attempts.append(model)
        if len(attempts) == 1:
            raise RateLimitError("429")
        return f"answer from {model}"

    assert failover.call(call) == "answer from cheap"
    assert attempts == ["cheap", "cheap"]
    never = Failover(["cheap", "dear"], fits=lambda m: m == "cheap")
    with pytest.raises(NoCandidateLeft) as err:
        never.call(lambda m: (_ for _ in ()).throw(RateLimitError("429")))
    assert err.value.reasons == {"cheap": "rate_limit", "dear": "over budget"}
