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
