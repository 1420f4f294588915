"""OTel GenAI spans for calls made by the real clients agree with the ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv
from test_cost_tagger_wire import CLIENTS, USAGE, expected_cost, records, run
from wire_server import WireServer

from graphthrift import CostTagger, Ledger
from graphthrift.ledger import OtelExporter


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.mark.parametrize("client", list(CLIENTS))
def test_spans_carry_the_cache_attributes_the_ledger_has(
    wire: WireServer,
    ledger: Ledger,
    tenant: str,
    client: str,
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, spans = memory
    exporter = OtelExporter(ledger, tracer_provider=provider)
    reply = USAGE[client]
    wire.reply(**reply)
    try:
        run(
            CLIENTS[client](wire),
            "invoke",
            {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": tenant}},
        )
        [row] = records(ledger, tenant)
        deadline = time.monotonic() + 10
        while not spans.get_finished_spans() and time.monotonic() < deadline:
            time.sleep(0.02)  # listeners run right after the commit, on the writer thread
    finally:
        exporter.detach()
    [span] = spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    writes = reply.get("cache_write_5m", 0) + reply.get("cache_write_1h", 0)
    # input_tokens is the whole prompt, cached and cache-written tokens included
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == reply["input_tokens"] == row["input_tokens"]
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == reply["cached_tokens"]
    assert attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == writes
    assert attrs[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == reply.get("reasoning_tokens", 0)
    assert attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == reply["output_tokens"]
    model = row["model"]
    assert attrs["graphthrift.cost_usd"] == pytest.approx(expected_cost(model, reply), abs=1e-6)
    assert attrs["graphthrift.cache_savings_usd"] == pytest.approx(row["cache_savings_usd"])
