"""OpenTelemetry spans for every LLM call and cache hit, with the GenAI semantic conventions.

``OtelExporter`` is a ledger listener (install the ``otel`` extra: ``pip install
'graphthrift[otel]'``). For each committed ``llm`` record it emits one span named
``chat {model}`` carrying ``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.provider.name`` (and the older ``gen_ai.system``) when the
provider can be told from the model name, ``gen_ai.usage.input_tokens`` (the whole prompt,
cached and cache-written tokens included, as the conventions ask),
``gen_ai.usage.output_tokens``, ``gen_ai.usage.cache_read.input_tokens``,
``gen_ai.usage.cache_creation.input_tokens``, ``gen_ai.usage.reasoning.output_tokens`` and
``gen_ai.conversation.id`` (the thread), plus ``graphthrift.*`` attributes: ``cost_usd``,
``cached_tokens``, ``cache_write_tokens``, ``cache_savings_usd``, ``reasoning_tokens``, the tags
(``tenant_id``, ``feature``, ``node``, ``route``, ``prompt_version``, ``thread_id``,
``run_id``), ``usage_source``, ``retry``, ``attempt`` and ``streamed``. The span starts at
the record's ``ts`` and lasts ``latency_ms``; a failed call has status ERROR and
``error.type`` (timeout, rate_limit, bad_request, upstream, other). Each cache hit becomes a
span ``cache_hit {layer}`` with ``graphthrift.saved_usd``.

Trace grouping. Spans are made on the ledger's writer thread, after the call, so they cannot
inherit the caller's active span. Instead every span of one graph run goes in one trace whose
id is derived from ``run_id``: the run id itself when it is a UUID (LangChain's root run id,
so the trace id matches the LangSmith run), else the first 16 bytes of its SHA-256. Their
parent is a virtual root span whose id is also derived from ``run_id``; it is never
exported, so backends show the calls as siblings under a missing root. A record whose
``extra["traceparent"]`` holds a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)
is parented on that span instead, which is how a caller's live trace can be joined. Records
without either start a trace of their own. The derived parent is marked sampled, so a
parent-based sampler keeps every call of a run together.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> exporter = OtelExporter(ledger, tracer_provider=TracerProvider())
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from graphthrift import __version__, diagnostics
from graphthrift.errors import MissingExtra
from graphthrift.ledger.observer import LedgerObserver
from graphthrift.ledger.prices import split_model_ref
from graphthrift.ledger.records import LedgerRecord

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer, TracerProvider

    from graphthrift.ledger.ledger import Ledger

__all__ = ["OtelExporter", "provider_name", "trace_id_for_run"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_US = 1_000
# graphthrift / genai-prices provider ids -> gen_ai.provider.name values of the semconv.
_SEMCONV_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "gemini": "gcp.gemini",
    "azure": "azure.ai.openai",
    "aws": "aws.bedrock",
    "mistral": "mistral_ai",
    "x-ai": "x_ai",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "perplexity": "perplexity",
}
# Model-name prefixes that identify a provider when the reference names none.
_NAME_PREFIXES = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gcp.gemini"),
    ("mistral-", "mistral_ai"),
    ("grok-", "x_ai"),
    ("deepseek-", "deepseek"),
    ("command-", "cohere"),
)


def _otel() -> Any:
    """The ``opentelemetry.trace`` module, or ``MissingExtra`` naming the install."""
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise MissingExtra("otel", "opentelemetry-sdk") from exc
    return trace


def provider_name(model: str | None) -> str | None:
    """The semconv ``gen_ai.provider.name`` of ``model`` (``"openai:gpt-4o"`` -> ``"openai"``).

    Read from the reference's ``provider:`` / ``provider/`` prefix, else from well-known
    model-name prefixes (``gpt-``, ``claude-``, ``gemini-``, ...); None when unknown.
    """
    if not model:
        return None
    provider, bare = split_model_ref(model)
    if provider is not None:
        return _SEMCONV_PROVIDERS.get(provider, provider)
    lowered = bare.lower()
    for prefix, name in _NAME_PREFIXES:
        if lowered.startswith(prefix):
            return name
    return None


def trace_id_for_run(run_id: str) -> int:
    """The 128-bit trace id shared by every span of graph run ``run_id``.

    A UUID run id (LangChain's) is used as is; any other text is hashed.
    """
    try:
        value = uuid.UUID(run_id).int
    except ValueError:
        value = 0
    if value == 0:
        value = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big") or 1
    return value


def _root_span_id(run_id: str) -> int:
    digest = hashlib.sha256(b"graphthrift-run-root:" + run_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _ns(ts: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (no float rounding)."""
    return ((ts - _EPOCH) // timedelta(microseconds=1)) * _NS_PER_US


def _parse_traceparent(value: Any) -> tuple[int, int, int] | None:
    if not isinstance(value, str):
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, flags


class OtelExporter(LedgerObserver):
    """Emits OpenTelemetry spans for the ledger's LLM calls and cache hits.

    Args:
        ledger: a ``Ledger`` to attach to at once (or call ``attach`` later).
        tracer_provider: where spans go; the global provider
            (``opentelemetry.trace.get_tracer_provider()``) when None.
        cache_hits: also emit a ``cache_hit {layer}`` span per served cache hit.

    Raises:
        MissingExtra: OpenTelemetry is not installed (``pip install 'graphthrift[otel]'``).

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        >>> OtelExporter(ledger, tracer_provider=provider)
    """

    def __init__(
        self,
        ledger: Ledger | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        cache_hits: bool = True,
    ) -> None:
        self._trace = _otel()
        provider = tracer_provider or self._trace.get_tracer_provider()
        self._tracer: Tracer = provider.get_tracer("graphthrift", __version__)
        self.cache_hits = cache_hits
        self._ledgers: list[Ledger] = []
        if ledger is not None:
            self.attach(ledger)

    def observe(self, records: Iterable[LedgerRecord]) -> None:
        """Emit the spans of ``records``; what the ledger calls after each batch.

        A record that cannot be exported is counted as ``otel_record_failure`` and skipped.
        """
        for record in records:
            try:
                if record.kind == "llm":
                    self._llm_span(record)
                elif record.kind == "cache_hit" and self.cache_hits:
                    self._cache_span(record)
            except Exception as exc:
                diagnostics.count(
                    "otel_record_failure", "graphthrift: a span could not be exported: %r", exc
                )

    # -- spans -------------------------------------------------------------------------------

    def _parent(self, record: LedgerRecord) -> Context:
        trace = self._trace
        from opentelemetry.context import Context

        parsed = _parse_traceparent((record.extra or {}).get("traceparent"))
        if parsed is not None:
            trace_id, span_id, flags = parsed
        elif record.run_id:
            trace_id = trace_id_for_run(record.run_id)
            span_id = _root_span_id(record.run_id)
            flags = trace.TraceFlags.SAMPLED
        else:
            return Context()  # explicitly a root: the writer thread's context is not the call's
        parent = trace.SpanContext(
            trace_id=trace_id,
            span_id=span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
        )
        ctx: Context = trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())
        return ctx

    def _emit(
        self,
        name: str,
        record: LedgerRecord,
        attributes: dict[str, Any],
        kind: Any,
        error: bool,
    ) -> None:
        trace = self._trace
        start = _ns(record.ts)
        end = start + max(0, round((record.latency_ms or 0.0) * 1_000_000))
        span = self._tracer.start_span(
            name,
            context=self._parent(record),
            kind=kind,
            attributes={k: v for k, v in attributes.items() if v is not None},
            start_time=start,
        )
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, record.error_type or "other"))
        span.end(end_time=end)

    def _llm_span(self, record: LedgerRecord) -> None:
        model = record.model
        bare = split_model_ref(model)[1] if model else None
        provider = provider_name(model)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": bare,
            "gen_ai.response.model": bare,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.usage.input_tokens": record.input_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
            # the semconv's current names (the underscore spellings are deprecated)
            "gen_ai.usage.cache_read.input_tokens": record.cached_tokens,
            "gen_ai.usage.cache_creation.input_tokens": record.cache_write_tokens,
            "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
            "gen_ai.conversation.id": record.thread_id,
            "gen_ai.request.stream": record.streamed,
            "error.type": None if record.success else (record.error_type or "other"),
            "graphthrift.model": model,
            "graphthrift.cost_usd": record.cost_usd,
            "graphthrift.cached_tokens": record.cached_tokens,
            "graphthrift.cache_write_tokens": record.cache_write_tokens,
            "graphthrift.cache_savings_usd": record.cache_savings_usd,
            "graphthrift.reasoning_tokens": record.reasoning_tokens,
            "graphthrift.usage_source": record.usage_source,
            "graphthrift.retry": record.retry,
            "graphthrift.attempt": record.attempt,
            "graphthrift.streamed": record.streamed,
            "graphthrift.call_id": record.call_id,
            **_tags(record),
        }
        name = f"chat {bare}" if bare else "chat"
        self._emit(name, record, attributes, self._trace.SpanKind.CLIENT, not record.success)

    def _cache_span(self, record: LedgerRecord) -> None:
        layer = record.layer or "cache"
        extra = record.extra or {}
        similarity = extra.get("similarity")
        attributes: dict[str, Any] = {
            "gen_ai.request.model": split_model_ref(record.model)[1] if record.model else None,
            "graphthrift.layer": layer,
            "graphthrift.model": record.model,
            "graphthrift.saved_usd": record.saved_usd,
            "graphthrift.saved_tokens": record.saved_tokens,
            "graphthrift.input_tokens": record.input_tokens,
            "graphthrift.output_tokens": record.output_tokens,
            "graphthrift.cache.namespace": _text(extra.get("namespace")),
            "graphthrift.cache.similarity": (
                float(similarity) if isinstance(similarity, int | float) else None
            ),
            **_tags(record),
        }
        self._emit(f"cache_hit {layer}", record, attributes, self._trace.SpanKind.INTERNAL, False)

    def __repr__(self) -> str:
        return f"OtelExporter(ledgers={len(self._ledgers)}, cache_hits={self.cache_hits})"


def _tags(record: LedgerRecord) -> dict[str, Any]:
    return {
        f"graphthrift.{name}": getattr(record, name)
        for name in (
            "tenant_id",
            "feature",
            "node",
            "route",
            "prompt_version",
            "thread_id",
            "run_id",
        )
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
