"""The recall micro benchmark runs end to end and writes its figures."""

from __future__ import annotations

import math

from graphthrift.bench.recall import run_recall_bench
from graphthrift.store.postgres import Store


def test_recall_bench_writes_latency_figures(store: Store) -> None:
    figures = run_recall_bench(store, snippets=300, per_thread=100, tenants=2, queries=12)
    assert figures["snippets"] == 300 and figures["threads"] == 3
    for key in ("recall_ms", "recall_repeat_ms", "exact_search_ms", "hnsw_search_ms"):
        assert set(figures[key]) == {"p50", "p95", "p99"}
        assert all(math.isfinite(v) and v > 0 for v in figures[key].values())
    assert 0.0 <= figures["hnsw_agrees_with_exact"] <= 1.0
    assert len(figures["embed_query_ms"]) == 2
