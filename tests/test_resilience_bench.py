"""``graphthrift bench resilience --quick`` writes the figures issue 17 fixes."""

from __future__ import annotations

import json
from pathlib import Path

from graphthrift import Store
from graphthrift.cli import main


def test_bench_resilience_quick_writes_the_figures(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "resilience.json"
    argv = ["--url", store.url, "bench", "resilience", "--quick", "--tasks", "20"]
    assert main([*argv, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    policies = figures["policies"]
    assert set(policies) == {"raw", "langchain", "graphthrift"}
    keys = {
        "completion_rate",
        "provider_calls",
        "rate_limited_responses",
        "duplicate_generations",
        "retry_cost_usd",
        "over_budget_runs",
        "p95_ms",
    }
    assert all(keys <= set(row) for row in policies.values())
    # the raw client generates the client's retries and the concurrent twins again
    assert policies["raw"]["duplicate_generations"] > 0
    assert policies["graphthrift"]["duplicate_generations"] == 0
    assert policies["graphthrift"]["completion_rate"] > policies["raw"]["completion_rate"]
    assert figures["single_flight"] == {"requests": 50, "provider_calls": 1}
    assert figures["restart"] == {
        "flushed_rows_lost": 0,
        "reservations_held_after_expiry": 0,
        # the drained worker's unit that outlived the grace period, resumed by one of two
        "interrupted_units_recorded": 1,
        "resumed_once": 1,
        "resumed_twice_or_more": 0,
    }
    assert figures["targets"]["interrupted_units_resumed_once"] is True
    assert figures["retry_cost_floor_usd"] > 0
    assert set(figures["overhead_ms"]) == {"p50", "p95"}


def test_the_retry_cost_floor_prices_the_outage_at_least() -> None:
    """An oracle must answer every outage task on the fallback, so its retry cost is at
    least the fallback's premium on those tasks; and it is below any policy that retries
    blindly (here: the same draws, every model's attempts until an answer, both paid)."""
    from graphthrift.bench.resilience import (
        FALLBACK,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        PRIMARY,
        cost_usd,
        retry_cost_floor,
    )

    tasks = 160
    primary = cost_usd(PRIMARY, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0
    fallback = cost_usd(FALLBACK, INPUT_TOKENS, OUTPUT_TOKENS) or 0.0
    outage = int(tasks * 0.45) - int(tasks * 0.25)
    floor = retry_cost_floor(17, tasks)
    assert floor >= outage * (fallback - primary) - 1e-12
    assert floor < outage * fallback + tasks * primary  # far below paying both everywhere
    assert retry_cost_floor(18, tasks) != floor  # it reads the run's own draws


def test_the_oracle_pays_what_the_simulated_provider_bills() -> None:
    """The oracle's cost of a task is what the simulated provider bills for the cheaper
    model's attempts up to its answer (checked against the provider itself), and the
    completion ceiling counts the tasks whose cheapest answer fits the run budget."""
    from graphthrift.bench.resilience import (
        FALLBACK,
        PRIMARY,
        RUN_BUDGET_CALLS,
        FaultyProvider,
        completion_ceiling,
        oracle_costs,
        primary_price,
    )

    seed, tasks = 17, 160
    costs = oracle_costs(seed, tasks)
    down = (int(tasks * 0.25), int(tasks * 0.45))
    for task in (3, 5, 47, 59, 100):
        content = f"question #{task}" + (" (slow)" if task % 10 == 5 else "")
        billed = []
        for model in (PRIMARY, FALLBACK):
            provider = FaultyProvider(seed, 0.0, down)
            for _ in range(20):
                try:
                    provider.complete(model, content)
                    billed.append(provider.billed_usd[content])
                    break
                except Exception:
                    continue
        assert costs[task] is not None and abs(costs[task] - min(billed)) < 1e-12
    budget = RUN_BUDGET_CALLS * primary_price()
    fits = sum(1 for c in costs if c is not None and c <= budget + 1e-12)
    assert completion_ceiling(seed, tasks) == round(fits / tasks, 4) <= 1.0
