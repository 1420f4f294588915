"""Prometheus metrics: real ledger records in, a real HTTP scrape out."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graphthrift import CostTagger, Ledger, LedgerRecord, Router, diagnostics
from graphthrift.ledger import OTHER, PrometheusMetrics

from fakes import RateLimitError, flaky_model, triage_answer_graph

Samples = list[tuple[str, dict[str, str], float]]


def _settle(ledger: Ledger, metrics: PrometheusMetrics, expected: int) -> None:
    """Flush, then wait for the listener: it runs on the writer thread just after commit."""
    ledger.flush()
    deadline = time.monotonic() + 10.0
    while metrics.observed < expected:
        assert time.monotonic() < deadline, f"metrics saw {metrics.observed}/{expected} records"
        time.sleep(0.01)


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return _samples(text)


def _samples(text: str) -> Samples:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for sample, got, value in samples
        if sample == name and all(got.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def metrics(ledger: Ledger) -> Iterator[PrometheusMetrics]:
    m = PrometheusMetrics(ledger)
    yield m
    m.close()


def _graph_run(ledger: Ledger, tenant: str) -> None:
    """Two nodes of a LangGraph graph, each calling a fake chat model that reports usage."""
    config: Any = {
        "callbacks": [CostTagger(ledger, feature="support")],
        "metadata": {"tenant_id": tenant},
    }
    triage_answer_graph().invoke({"messages": [("user", "my card was declined")]}, config=config)


def test_scraped_metrics_match_the_ledger(
    ledger: Ledger, metrics: PrometheusMetrics, tenant: str
) -> None:
    _graph_run(ledger, tenant)
    with pytest.raises(RateLimitError):
        flaky_model(RateLimitError("slow down")).invoke(
            "x",
            config={
                "callbacks": [CostTagger(ledger, feature="support")],
                "metadata": {"tenant_id": tenant},
            },
        )
    ledger.record(
        LedgerRecord(
            kind="cache_hit",
            layer="semantic",
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=100,
            cost_usd=0.0,
            tenant_id=tenant,
            feature="support",
        )
    )
    ledger.record(
        LedgerRecord(
            kind="compression",
            layer="compression",
            model="gpt-4o",
            saved_tokens=2000,
            tenant_id=tenant,
            feature="support",
        )
    )
    router = Router("gpt-4o-mini", "gpt-4o", ledger=ledger, tags={"tenant_id": tenant})

    def call(model: str) -> str:
        if model == "gpt-4o-mini" and calls:
            calls.pop()
            raise RateLimitError("cheap model down")
        return "Your daily card limit is 500 dollars."

    calls: list[int] = []
    for _ in range(2):
        assert router.run("What is my card's daily limit?", call).route == "cheap"
    calls.append(1)
    assert router.run("What is my card's daily limit?", call).route == "escalated"
    _settle(ledger, metrics, expected=3 + 2 + 3)

    server = metrics.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1"  # loopback unless asked otherwise
        samples = _scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()

    report = {r["kind"]: r for r in ledger.report(["kind"], tenant_id=tenant)}
    llm = report["llm"]
    t = {"tenant_id": tenant}
    assert _total(samples, "graphthrift_cost_usd_total", **t) == pytest.approx(
        sum(r["cost_usd"] for r in report.values())
    )
    assert llm["cost_usd"] > 0
    by_node = {r["node"]: r for r in ledger.report(["node"], tenant_id=tenant, kind="llm")}
    assert _total(
        samples, "graphthrift_cost_usd_total", node="answer", feature="support", **t
    ) == pytest.approx(by_node["answer"]["cost_usd"])
    for token_type in ("input", "output", "cached"):
        assert (
            _total(samples, "graphthrift_tokens_total", type=token_type, **t)
            == (llm[f"{token_type}_tokens"])
        )
    assert _total(samples, "graphthrift_tokens_total", type="cached", node="answer", **t) == 1024
    assert _total(samples, "graphthrift_llm_requests_total", success="true", **t) == 2
    assert (
        _total(
            samples,
            "graphthrift_llm_requests_total",
            success="false",
            error_type="rate_limit",
            **t,
        )
        == 1
    )
    assert _total(samples, "graphthrift_llm_latency_seconds_count", **t) == 3
    assert _total(samples, "graphthrift_llm_latency_seconds_count", node="triage", **t) == 1
    assert _total(samples, "graphthrift_llm_latency_seconds_bucket", le="+Inf", **t) == 3
    saved = {r["layer"]: r for r in ledger.report(["layer"], tenant_id=tenant)}
    for layer in ("semantic", "compression"):
        assert saved[layer]["saved_usd"] > 0
        assert _total(samples, "graphthrift_saved_usd_total", layer=layer, **t) == pytest.approx(
            saved[layer]["saved_usd"]
        )
    assert _total(samples, "graphthrift_saved_tokens_total", layer="compression", **t) == 2000
    assert _total(samples, "graphthrift_cache_hits_total", layer="semantic", **t) == 1
    cheap = _total(samples, "graphthrift_route_total", route="cheap", **t)
    escalated = _total(samples, "graphthrift_route_total", route="escalated", reason="error", **t)
    assert (cheap, escalated) == (2, 1)
    assert escalated / (cheap + escalated) == pytest.approx(1 / 3)  # the escalation rate


def test_fail_open_budget_and_cache_counters_are_read_at_scrape_time(
    metrics: PrometheusMetrics,
) -> None:
    server = metrics.serve(0)
    try:
        before = _scrape(server.server_port)
        diagnostics.count("ledger_write_failure")
        diagnostics.count("cache_timeout")
        diagnostics.count("budget_refusal_max_usd")
        diagnostics.count("cache_semantic_hit")
        diagnostics.count("cache_semantic_miss")
        diagnostics.count("cache_semantic_miss")
        after = _scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    for event in ("ledger_write_failure", "cache_timeout"):
        assert delta("graphthrift_fail_open_total", event=event) == 1
        assert _total(after, "graphthrift_fail_open_total", event=event) == diagnostics.get(event)
    assert delta("graphthrift_budget_violations_total", limit="max_usd") == 1
    assert delta("graphthrift_cache_requests_total", layer="semantic", result="hit") == 1
    assert delta("graphthrift_cache_requests_total", layer="semantic", result="miss") == 2
    events = {labels["event"] for name, labels, _ in after if name == "graphthrift_fail_open_total"}
    assert not any(e.startswith(("cache_semantic_", "budget_refusal")) for e in events)


def test_label_cardinality_is_bounded(ledger: Ledger, tenant: str) -> None:
    metrics = PrometheusMetrics(ledger, max_label_values=10)
    try:
        ledger.record_many(
            LedgerRecord(
                model="gpt-4o-mini",
                input_tokens=10,
                output_tokens=1,
                latency_ms=5.0,
                tenant_id=f"{tenant}-{i}",
                feature="bulk",
                thread_id=f"thread-{i}",
                run_id=f"run-{i}",
            )
            for i in range(60)
        )
        _settle(ledger, metrics, expected=60)
        samples = _samples(metrics.text())
    finally:
        metrics.close()
    requests = [
        (labels, value)
        for name, labels, value in samples
        if name == "graphthrift_llm_requests_total"
    ]
    tenants = {labels["tenant_id"] for labels, _ in requests}
    assert len(tenants) <= 10 + 1 and OTHER in tenants
    assert sum(value for _, value in requests) == 60  # nothing lost, only folded into "other"
    assert _total(samples, "graphthrift_llm_requests_total", tenant_id=OTHER) == 50
    assert not any("thread_id" in labels or "run_id" in labels for _, labels, _ in samples)


def test_detach_stops_counting_and_instances_do_not_share_state(
    ledger: Ledger, tenant: str
) -> None:
    first, second = PrometheusMetrics(ledger), PrometheusMetrics(ledger, label_names=["model"])
    ledger.record(LedgerRecord(model="gpt-4o-mini", input_tokens=5, tenant_id=tenant))
    _settle(ledger, first, expected=1)
    _settle(ledger, second, expected=1)
    second.detach(ledger)
    ledger.record(LedgerRecord(model="gpt-4o-mini", input_tokens=5, tenant_id=tenant))
    _settle(ledger, first, expected=2)
    first.close()
    assert second.observed == 1
    by_model = _samples(second.text())
    assert _total(by_model, "graphthrift_llm_requests_total", model="gpt-4o-mini") == 1
    assert _total(_samples(first.text()), "graphthrift_llm_requests_total", tenant_id=tenant) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_names": ["tenant_id", "run_id"]}, "run_id cannot be a metrics label"),
        ({"label_names": ["colour"]}, "unknown label"),
        ({"max_label_values": 0}, "max_label_values"),
        ({"namespace": "my-app"}, "namespace"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrometheusMetrics(**kwargs)


def test_env_sets_the_label_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHTHRIFT_METRICS_MAX_LABEL_VALUES", "7")
    assert PrometheusMetrics().max_label_values == 7
    assert PrometheusMetrics(max_label_values=3).max_label_values == 3
