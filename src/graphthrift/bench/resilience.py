"""graphthrift bench resilience: raw client, LangChain retry + fallback, and graphthrift's
resilience layer, against a provider simulation with injected faults, in one run.

Faults (deterministic per task and attempt): 20 % 429 with ``retry-after``, 5 % 500, 2 %
timeouts (the provider generated, and bills, the answer the client never got), the primary
provider down for a stretch of the run, 10 % of requests retried by the client while the first
attempt still runs (its "15 s" timeout, scaled), and 5 % identical requests sent concurrently.
Time is scaled down (``--scale``) so that a run takes seconds; the figures are counts and
ratios, plus latencies in scaled milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import machine, percentiles, scratch_store, write_json
from graphthrift.bench._restart import restart_figures
from graphthrift.ledger import cost_usd
from graphthrift.store import Store

PRIMARY = "gpt-4o-mini"
FALLBACK = "claude-3-haiku-20240307"
INPUT_TOKENS, OUTPUT_TOKENS = 400, 80
#: The agent's instructions: with the question, about the ``INPUT_TOKENS`` the provider bills,
#: so that a budget counting the request's input prices a call as the provider does.
SYSTEM_PROMPT = "Answer the user's question briefly and accurately. " * 48


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=160, help="distinct user requests")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent runs")
    parser.add_argument("--scale", type=float, default=0.002, help="seconds per simulated second")
    parser.add_argument("--seed", type=int, default=17)


# -- the provider simulation -------------------------------------------------------------------


class SimRateLimitError(Exception):
    """A 429 with the provider's ``retry-after`` (scaled seconds)."""

    status_code = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__("429 rate limited")
        self.retry_after = retry_after


class SimServerError(Exception):
    status_code = 500


class SimUnavailableError(Exception):
    status_code = 503


class SimTimeoutError(Exception):
    """The client gave up; the provider finished the generation and bills it."""


def _u(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultyProvider:
    """Counts calls, 429s and billed generations per request content."""

    def __init__(self, seed: int, scale: float, down: tuple[int, int]) -> None:
        self.seed = seed
        self.scale = scale
        self.down = down
        self.lock = threading.Lock()
        self.calls = 0
        self.rate_limited = 0
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.billed: Counter[str] = Counter()
        self.billed_usd: defaultdict[str, float] = defaultdict(float)
        self.answered: Counter[str] = Counter()
        self.delivered_usd: dict[str, float] = {}

    def complete(self, model: str, content: str) -> str:
        task = int(content.split("#")[1].split()[0])
        slow = "(slow)" in content
        with self.lock:
            self.calls += 1
            self.attempts[(content, model)] += 1
            attempt = self.attempts[(content, model)]
        u = _u(self.seed, content, model, attempt)
        if model == PRIMARY and self.down[0] <= task < self.down[1]:
            time.sleep(2 * self.scale)
            raise SimUnavailableError("503 provider down")
        if u < 0.20:
            with self.lock:
                self.rate_limited += 1
            raise SimRateLimitError(retry_after=2 * self.scale)
        if u < 0.25:
            time.sleep(2 * self.scale)
            raise SimServerError("500 internal error")
        time.sleep((40 if slow else 10) * self.scale)
        price = cost_usd(model, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0
        with self.lock:
            self.billed[content] += 1
            self.billed_usd[content] += price
        if u < 0.27:
            raise SimTimeoutError("client timeout")
        with self.lock:
            self.answered[content] += 1
            self.delivered_usd.setdefault(content, price)
        return f"answer to {content}"


class SimChatModel(BaseChatModel):
    """A chat model served by ``FaultyProvider``."""

    model_name: str = PRIMARY
    provider: Any = None

    @property
    def _llm_type(self) -> str:
        return "graphthrift-faulty-sim"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        content = next(str(m.content) for m in reversed(messages) if m.type == "human")
        text = self.provider.complete(self.model_name, content)
        message = AIMessage(
            text,
            usage_metadata={
                "input_tokens": INPUT_TOKENS,
                "output_tokens": OUTPUT_TOKENS,
                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            },
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


# -- the workload -------------------------------------------------------------------------------


#: A run's budget, in primary calls: the answer plus a retry and a half.
RUN_BUDGET_CALLS = 2.5


def primary_price() -> float:
    """What one call on the primary costs."""
    return cost_usd(PRIMARY, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0


def _submissions(n: int, scale: float) -> list[tuple[str, str, float]]:
    """(content, request id, delay before sending): every task once; 10 % sent again by a
    client whose first attempt timed out (same request id, while it still runs); 5 % sent
    twice at once by two users (identical content, different request ids)."""
    out: list[tuple[str, str, float]] = []
    for task in range(n):
        slow = task % 10 == 5
        content = f"question #{task}" + (" (slow)" if slow else "")
        out.append((content, f"req-{task}", 0.0))
        if slow:
            out.append((content, f"req-{task}", 15 * scale))
        if task % 20 == 3:
            out.append((content, f"req-{task}-twin", 0.0))
    return out


def _policy_agent(name: str, provider: FaultyProvider, store: Store, scale: float) -> Any:
    from langchain.agents import create_agent

    primary = SimChatModel(model_name=PRIMARY, provider=provider)
    fallback = SimChatModel(model_name=FALLBACK, provider=provider)
    if name == "raw":
        return create_agent(primary, tools=[], system_prompt=SYSTEM_PROMPT)
    if name == "langchain":
        from langchain.agents.middleware import ModelFallbackMiddleware, ModelRetryMiddleware

        return create_agent(
            primary,
            tools=[],
            system_prompt=SYSTEM_PROMPT,
            middleware=[
                ModelFallbackMiddleware(fallback),
                ModelRetryMiddleware(
                    max_retries=3,
                    initial_delay=2 * scale,
                    max_delay=40 * scale,
                    on_failure="error",
                ),
            ],
        )
    from graphthrift.langgraph import dedup_requests
    from graphthrift.middleware.resilience import FailoverMiddleware, ResilienceMiddleware
    from graphthrift.resilience import (
        Backoff,
        CircuitBreaker,
        RequestDedup,
        Retrier,
        RetryBudget,
        RunBudget,
        SingleFlight,
    )

    class _RetryEachCandidate(ResilienceMiddleware):
        """The retries, inside the failover (create_agent wants distinct middleware names)."""

    retrier = Retrier(
        max_retries=3,
        backoff=Backoff(base_s=2 * scale, cap_s=40 * scale, max_retry_after_s=60),
        budget=RetryBudget(store, max_share=0.5, min_retries=6, window_s=600),
    )
    # callers wait for an in-flight probe up to about one call's time before failing over
    breaker = CircuitBreaker(
        min_calls=4, error_rate=0.5, open_s=60 * scale, window_s=10, probe_wait_s=15 * scale
    )
    # the budget each run is judged by (``_run_policy``); the requests cap output at what
    # the simulation generates
    spend = RunBudget(RUN_BUDGET_CALLS * primary_price())
    cap = OUTPUT_TOKENS
    agent = create_agent(
        primary,
        tools=[],
        system_prompt=SYSTEM_PROMPT,
        middleware=[
            ResilienceMiddleware(SingleFlight(store, poll_interval=0.005), model_name=PRIMARY),
            FailoverMiddleware(
                {FALLBACK: fallback},
                breaker=breaker,
                model_name=PRIMARY,
                run_budget=spend,
                max_output_tokens=cap,
            ),
            _RetryEachCandidate(
                retrier=retrier, model_name=PRIMARY, run_budget=spend, max_output_tokens=cap
            ),
        ],
    )
    return dedup_requests(agent, RequestDedup(store, poll_interval=0.005))


def oracle_costs(seed: int, tasks: int, attempts: int = 20) -> list[float | None]:
    """Per task, the least any policy could pay to get it answered on this run's faults.

    The simulated provider's faults are deterministic per (request, model, attempt), so an
    oracle that knew them would answer each task by the cheaper of the primary's and the
    fallback's attempt sequences: 429s and 500s before a success cost nothing, a billed
    timeout costs a full price, and the primary is down for the outage's tasks. None: no
    answer within ``attempts`` on either model.
    """
    down = (int(tasks * 0.25), int(tasks * 0.45))

    def cheapest(content: str, task: int, model: str) -> float | None:
        if model == PRIMARY and down[0] <= task < down[1]:
            return None  # every attempt is a 503
        price, billed = cost_usd(model, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0, 0.0
        for attempt in range(1, attempts + 1):
            u = _u(seed, content, model, attempt)
            if u >= 0.25:  # billed: an answer, or a timeout (u < 0.27) to retry
                billed += price
                if u >= 0.27:
                    return billed
        return None

    out: list[float | None] = []
    for task in range(tasks):
        content = f"question #{task}" + (" (slow)" if task % 10 == 5 else "")
        found = (cheapest(content, task, m) for m in (PRIMARY, FALLBACK))
        paths = [c for c in found if c is not None]
        out.append(min(paths) if paths else None)
    return out


def retry_cost_floor(seed: int, tasks: int) -> float:
    """The least retry cost any policy that answers every task could have on this run
    (USD), measured as the bench measures every policy's: billed beyond one primary call
    per task."""
    one = cost_usd(PRIMARY, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0
    return round(sum(max(0.0, (c or 0.0) - one) for c in oracle_costs(seed, tasks)), 8)


def completion_ceiling(seed: int, tasks: int) -> float:
    """The most tasks any policy could answer without a run going over the budget it is
    judged by (``RUN_BUDGET_CALLS`` primary calls), as a share of the tasks."""
    budget = RUN_BUDGET_CALLS * (cost_usd(PRIMARY, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0)
    costs = oracle_costs(seed, tasks)
    return round(sum(1 for c in costs if c is not None and c <= budget + 1e-12) / tasks, 4)


def _run_policy(name: str, args: argparse.Namespace, store: Store, tasks: int) -> dict[str, Any]:
    down = (int(tasks * 0.25), int(tasks * 0.45))
    provider = FaultyProvider(args.seed, args.scale, down)
    agent = _policy_agent(name, provider, store, args.scale)
    tenant = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    latencies: list[float] = []
    answered: set[str] = set()
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def submit(item: tuple[str, str, float]) -> None:
        content, request_id, delay = item
        time.sleep(delay)
        config = {
            "metadata": {
                "tenant_id": tenant,
                "request_id": request_id,
                "run_id": f"{tenant}-{request_id}-{delay}",
            }
        }
        t0 = time.perf_counter()
        try:
            out = agent.invoke({"messages": [HumanMessage(content)]}, config)
            ok = isinstance(out["messages"][-1], AIMessage) and "answer to" in str(
                out["messages"][-1].content
            )
        except Exception as exc:
            ok = False
            with lock:
                errors[type(exc).__name__] += 1
        with lock:
            latencies.append((time.perf_counter() - t0) * 1000)
            if ok:
                answered.add(content)

    items = _submissions(tasks, args.scale)
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(submit, items))
    contents = {c for c, _, _ in items}
    one = cost_usd(PRIMARY, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0
    extra_usd = sum(
        max(0.0, provider.billed_usd[c] - (one if provider.billed[c] else 0.0)) for c in contents
    )
    run_budget = RUN_BUDGET_CALLS * one
    over = sum(
        1
        for c in contents
        if provider.billed_usd[c]
        > run_budget * sum(1 for i in items if i[0] == c and not i[1].endswith("-twin"))
        + (run_budget if any(i[0] == c and i[1].endswith("-twin") for i in items) else 0)
    )
    return {
        "completion_rate": round(len(answered) / len(contents), 4),
        "provider_calls": provider.calls,
        "rate_limited_responses": provider.rate_limited,
        "duplicate_generations": sum(max(0, provider.answered[c] - 1) for c in contents),
        "retry_cost_usd": round(extra_usd, 8),
        "over_budget_runs": over,
        "p95_ms": percentiles(latencies, 95)["p95"],
        "errors": dict(errors),
    }


def _single_flight(store: Store) -> dict[str, int]:
    from graphthrift.resilience import SingleFlight

    flight = SingleFlight(store)
    calls: list[int] = []
    n = 50

    def provider() -> str:
        calls.append(1)
        deadline = time.monotonic() + 30
        while flight.engine.waiting() < n - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        return "one answer"

    threads = [
        threading.Thread(target=flight.call, args=("burst", provider), kwargs={"scope": {}})
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return {"requests": n, "provider_calls": len(calls)}


def _overhead(store: Store, n: int) -> dict[str, float]:
    """Milliseconds single-flight plus a retrier add to a call on the no-fault path."""
    from graphthrift.resilience import Retrier, SingleFlight

    flight = SingleFlight(store)
    retrier = Retrier()
    added: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        flight.call(f"overhead-{i}-{uuid.uuid4().hex}", lambda: retrier.call(lambda: "ok"))
        added.append((time.perf_counter() - t0) * 1000)
    return percentiles(added, 50, 95)


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    tasks = min(args.tasks, 40) if quick else args.tasks
    base = Store(getattr(args, "url", None))
    policies: dict[str, dict[str, Any]] = {}
    try:
        with scratch_store(base) as store:
            for name in ("raw", "langchain", "graphthrift"):
                policies[name] = _run_policy(name, args, store, tasks)
            figures: dict[str, Any] = {
                "policies": policies,
                "single_flight": _single_flight(store),
                "restart": restart_figures(store),
                "overhead_ms": _overhead(store, 100 if quick else 300),
            }
    finally:
        base.close()
    lc, ours = policies["langchain"], policies["graphthrift"]
    # what an oracle that knew every fault draw could reach: the targets can be met only
    # if it can (retry cost under half of LangChain's; completion >= 0.99 within budget)
    figures["retry_cost_floor_usd"] = retry_cost_floor(args.seed, tasks)
    figures["completion_ceiling_within_budget"] = completion_ceiling(args.seed, tasks)
    figures["targets"] = {
        "completion_rate_ge_0_99": ours["completion_rate"] >= 0.99,
        "single_flight_one_call": figures["single_flight"]["provider_calls"] == 1,
        "no_duplicate_generations": ours["duplicate_generations"] == 0,
        "retry_cost_under_half_of_langchain": ours["retry_cost_usd"] < 0.5 * lc["retry_cost_usd"],
        "no_run_over_budget": ours["over_budget_runs"] == 0,
        "overhead_p95_under_1ms": figures["overhead_ms"]["p95"] < 1.0,
        "interrupted_units_resumed_once": (
            figures["restart"]["interrupted_units_recorded"] == 1
            and figures["restart"]["resumed_once"] == 1
            and figures["restart"]["resumed_twice_or_more"] == 0
        ),
    }
    figures["settings"] = {"tasks": tasks, "concurrency": args.concurrency, "scale": args.scale}
    figures["machine"] = {**machine(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    table = Table(title=f"graphthrift bench resilience ({tasks} tasks, {args.concurrency} runs)")
    table.add_column("policy")
    keys = [k for k in next(iter(policies.values())) if k != "errors"]
    for key in keys:
        table.add_column(key, justify="right")
    for name, row in policies.items():
        table.add_row(name, *(str(row[k]) for k in keys))
    console.print(table)
    console.print(
        f"single-flight {figures['single_flight']}, restart {figures['restart']}, "
        f"overhead_ms {figures['overhead_ms']}"
    )
    write_json(figures, getattr(args, "json", None))
    return figures
