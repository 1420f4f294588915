"""OpenTelemetry spans with the GenAI semantic conventions, from real ledger records."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from graphthrift import Ledger, LedgerRecord, MissingExtra
from graphthrift.ledger import OtelExporter, cost_usd, provider_name, trace_id_for_run


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def _finished(ledger: Ledger, memory: InMemorySpanExporter, n: int) -> list[ReadableSpan]:
    """Flush, then wait for the listener, which runs on the writer thread after commit."""
    ledger.flush()
    deadline = time.monotonic() + 10.0
    while len(memory.get_finished_spans()) < n:
        assert time.monotonic() < deadline, f"{len(memory.get_finished_spans())}/{n} spans"
        time.sleep(0.01)
    return list(memory.get_finished_spans())


def _ns(ts: datetime) -> int:
    return ((ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


def test_llm_calls_and_cache_hits_become_genai_spans(
    ledger: Ledger, tenant: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = spans
    exporter = OtelExporter(ledger, tracer_provider=provider)
    run_a, run_b = str(uuid.uuid4()), "run-b"
    t0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    tags = {"tenant_id": tenant, "feature": "support", "thread_id": "thread-1"}
    ledger.record_many(
        [
            LedgerRecord(
                ts=t0,
                model="openai:gpt-4o",
                node="answer",
                run_id=run_a,
                input_tokens=1500,
                output_tokens=400,
                cached_tokens=1024,
                reasoning_tokens=64,
                latency_ms=812.5,
                usage_source="provider",
                **tags,
            ),
            LedgerRecord(
                ts=t0 + timedelta(seconds=2),
                model="claude-sonnet-4-5",
                node="triage",
                run_id=run_a,
                latency_ms=30.0,
                success=False,
                error_type="rate_limit",
                cost_usd=0.0,
                usage_source="none",
                retry=True,
                attempt=2,
                **tags,
            ),
            LedgerRecord(
                ts=t0, model="gpt-4o-mini", run_id=run_b, input_tokens=10, latency_ms=5, **tags
            ),
            LedgerRecord(
                kind="cache_hit",
                ts=t0 + timedelta(seconds=3),
                layer="semantic",
                model="gpt-4o-mini",
                input_tokens=1000,
                output_tokens=100,
                cost_usd=0.0,
                extra={"namespace": "faq", "similarity": 0.97},
                **tags,
            ),
            LedgerRecord(kind="route", route="cheap", **tags),  # no span for routes
        ]
    )
    finished = _finished(ledger, memory, 4)
    exporter.detach()
    assert len(finished) == 4
    by_name = {s.name: s for s in finished}
    assert set(by_name) == {
        "chat gpt-4o",
        "chat claude-sonnet-4-5",
        "chat gpt-4o-mini",
        "cache_hit semantic",
    }

    ok = by_name["chat gpt-4o"]
    attrs = dict(ok.attributes or {})
    assert ok.kind is SpanKind.CLIENT
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "gpt-4o"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] == 1500
    assert attrs["gen_ai.usage.output_tokens"] == 400
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 0
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 64
    assert attrs["gen_ai.conversation.id"] == "thread-1"
    assert attrs["graphthrift.cost_usd"] == pytest.approx(cost_usd("gpt-4o", 1500, 400, 1024))
    assert attrs["graphthrift.cached_tokens"] == 1024
    assert attrs["graphthrift.reasoning_tokens"] == 64
    assert attrs["graphthrift.tenant_id"] == tenant
    assert attrs["graphthrift.feature"] == "support"
    assert attrs["graphthrift.node"] == "answer"
    assert attrs["graphthrift.run_id"] == run_a
    assert attrs["graphthrift.usage_source"] == "provider"
    assert attrs["graphthrift.retry"] is False and attrs["graphthrift.attempt"] == 1
    assert "error.type" not in attrs and "graphthrift.route" not in attrs  # None is left out
    assert ok.status.status_code is StatusCode.UNSET
    assert ok.start_time == _ns(t0)
    assert ok.end_time == _ns(t0) + 812_500_000

    failed = by_name["chat claude-sonnet-4-5"]
    fattrs = dict(failed.attributes or {})
    assert failed.status.status_code is StatusCode.ERROR
    assert fattrs["error.type"] == "rate_limit"
    assert fattrs["gen_ai.provider.name"] == "anthropic"
    assert fattrs["graphthrift.retry"] is True and fattrs["graphthrift.attempt"] == 2
    assert failed.end_time is not None and failed.start_time is not None
    assert failed.end_time - failed.start_time == 30_000_000

    # one graph run, one trace; the trace id is the run's UUID
    assert ok.context is not None and failed.context is not None
    assert ok.context.trace_id == failed.context.trace_id == uuid.UUID(run_a).int
    assert ok.parent is not None and failed.parent is not None
    assert ok.parent.span_id == failed.parent.span_id
    other = by_name["chat gpt-4o-mini"]
    assert other.context is not None and other.context.trace_id == trace_id_for_run(run_b)
    assert other.context.trace_id != ok.context.trace_id

    hit = by_name["cache_hit semantic"]
    hattrs = dict(hit.attributes or {})
    assert hit.kind is SpanKind.INTERNAL
    assert hattrs["graphthrift.layer"] == "semantic"
    assert hattrs["graphthrift.saved_usd"] == pytest.approx(cost_usd("gpt-4o-mini", 1000, 100))
    assert hattrs["graphthrift.cache.similarity"] == pytest.approx(0.97)
    assert hattrs["graphthrift.tenant_id"] == tenant
    assert hit.parent is None  # no run id: a trace of its own
    assert hit.start_time == hit.end_time == _ns(t0 + timedelta(seconds=3))


def test_a_traceparent_in_extra_joins_the_callers_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = spans
    exporter = OtelExporter(tracer_provider=provider)
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    exporter.observe(
        [
            LedgerRecord(
                model="gpt-4o-mini",
                run_id="ignored-when-traceparent",
                extra={"traceparent": f"00-{trace_id}-{span_id}-01"},
            )
        ]
    )
    (span,) = memory.get_finished_spans()
    assert span.context is not None and span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None and span.parent.span_id == int(span_id, 16)


def test_provider_names_follow_the_semantic_conventions() -> None:
    assert provider_name("anthropic:claude-3-5-haiku") == "anthropic"
    assert provider_name("google_genai:gemini-2.0-flash") == "gcp.gemini"
    assert provider_name("gpt-4o-mini") == "openai"
    assert provider_name("my-local-llama") is None
    assert provider_name(None) is None
    assert trace_id_for_run("same") == trace_id_for_run("same") != trace_id_for_run("other")


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if it were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'graphthrift\[otel\]'"):
        OtelExporter()
