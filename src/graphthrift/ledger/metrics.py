"""Prometheus metrics for what every tenant, feature, node and route spends and saves.

``PrometheusMetrics`` is a ledger listener: after each batch the ledger commits, it turns
the (priced) records into counters and a latency histogram, so the metrics agree with
``ledger.report`` and cost the user's call nothing. Process-wide fail-open events from
``graphthrift.diagnostics`` (cache timeouts, store failures, bad usage, ...) are read at
scrape time by a custom collector.

Metrics (``graphthrift`` is the default ``namespace``; ``L`` is ``label_names``, by default
``tenant_id, feature, node, route``):

- ``graphthrift_cost_usd_total{L}``: spend, the sum of ``cost_usd`` (as ``ledger.report``).
- ``graphthrift_saved_usd_total{L, layer}`` and ``graphthrift_saved_tokens_total{L, layer}``:
  what cache hits, compression and pruning saved (``layer`` is the record's layer or kind).
  A negative saving (a layer that cost more than it saved) goes to
  ``graphthrift_overspent_usd_total{L, layer}``, because a counter cannot go down.
- ``graphthrift_tokens_total{L, type}``: LLM tokens, ``type`` = input, output, cached,
  reasoning (cached is part of input, reasoning part of output, as in the ledger).
- ``graphthrift_llm_requests_total{L, success, error_type}``: LLM calls, ``success`` is
  ``"true"``/``"false"``, ``error_type`` is timeout, rate_limit, bad_request, upstream,
  other, or empty.
- ``graphthrift_llm_latency_seconds{L}``: histogram of LLM call latency.
- ``graphthrift_cache_hits_total{L, layer}``: cache hits booked in the ledger (per tenant).
- ``graphthrift_cache_requests_total{layer, result}``: every cache lookup, ``result`` = hit
  or miss (process-wide, from diagnostics: misses carry no tenant). Hit rate::

      sum by (layer) (rate(graphthrift_cache_requests_total{result="hit"}[5m]))
        / sum by (layer) (rate(graphthrift_cache_requests_total[5m]))

- ``graphthrift_route_total{L without route, route, reason}``: routed requests, ``route`` =
  cheap or escalated, ``reason`` = why a request went to the strong model (difficulty,
  sticky, confidence, validator, error; empty when cheap). Escalation rate::

      sum(rate(graphthrift_route_total{route="escalated"}[5m]))
        / sum(rate(graphthrift_route_total[5m]))

- ``graphthrift_budget_violations_total{limit}``: budget refusals (diagnostics counters named
  ``budget_refusal`` or ``budget_refusal_<limit>``, e.g. ``budget_refusal_max_usd``).
- ``graphthrift_fail_open_total{event}``: every other diagnostics counter (for example
  ``ledger_write_failure``, ``cache_timeout``, ``budget_store_failure``, ``bad_usage``).

Cardinality is bounded: for each label, the first ``max_label_values`` distinct values seen
are kept and any later value is exported as ``"other"`` (an untagged value is ``""`` and
counts as one value), so a label has at most ``max_label_values + 1`` values whatever the
traffic. ``thread_id`` and ``run_id`` are never labels: they grow without bound; use the
ledger (or the OpenTelemetry spans) to look at one thread or run.

Configuration: keyword arguments, then ``GRAPHTHRIFT_METRICS_MAX_LABEL_VALUES``,
``GRAPHTHRIFT_METRICS_PORT`` and ``GRAPHTHRIFT_METRICS_ADDR``, then the defaults (50, 9464,
127.0.0.1).

Example:
    >>> metrics = PrometheusMetrics(ledger)  # attaches to the ledger
    >>> server = metrics.serve(9464)  # http://127.0.0.1:9464/metrics
    >>> server.shutdown()
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from graphthrift import diagnostics
from graphthrift.config import env_int, env_str
from graphthrift.errors import MissingExtra
from graphthrift.ledger.observer import LedgerObserver
from graphthrift.ledger.records import LedgerRecord

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, Metric
    from prometheus_client.exposition import start_http_server
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtra(None, "prometheus-client") from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from graphthrift.ledger.ledger import Ledger

__all__ = ["DEFAULT_LABELS", "LATENCY_BUCKETS", "OTHER", "LabelLimiter", "PrometheusMetrics"]

DEFAULT_LABELS: tuple[str, ...] = ("tenant_id", "feature", "node", "route")
#: Tags that may be labels. ``thread_id`` and ``run_id`` are unbounded, so they never are.
LABELABLE: tuple[str, ...] = ("tenant_id", "feature", "node", "route", "model", "prompt_version")
_UNBOUNDED = ("thread_id", "run_id", "call_id")
#: Seconds; LLM calls take from tens of milliseconds (cached) to minutes (reasoning).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
OTHER = "other"
_MAX_EVENTS = 200
_TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached", "cached_tokens"),
    ("reasoning", "reasoning_tokens"),
)
_BUDGET_PREFIX = "budget_refusal"


class LabelLimiter:
    """Keeps the first ``max_values`` distinct values of each label; later ones are ``other``.

    Thread-safe. The kept set never changes once full, so a series that exists keeps
    existing and counters stay monotonic.

    Args:
        max_values: distinct values kept per label name.
    """

    def __init__(self, max_values: int) -> None:
        if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
            raise ValueError(f"max_label_values must be an int >= 1, got {max_values!r}")
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, label: str, value: object) -> str:
        """The exported value of ``label`` for ``value`` (``None`` is ``""``)."""
        text = "" if value is None else str(value)
        seen = self._seen.get(label)
        if seen is not None and text in seen:  # lock-free fast path: sets only grow
            return text
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if text in seen:
                return text
            if len(seen) < self.max_values:
                seen.add(text)
                return text
        return OTHER

    def values(self, label: str) -> frozenset[str]:
        """The values kept for ``label`` so far."""
        with self._lock:
            return frozenset(self._seen.get(label, ()))


class PrometheusMetrics(LedgerObserver):
    """Ledger-fed Prometheus metrics: cost, savings, tokens, latency, cache, routes, failures.

    Args:
        ledger: a ``Ledger`` to attach to at once (or call ``attach`` later, for several).
        registry: the ``CollectorRegistry`` to register in; by default a new one of its own,
            so several instances (and tests) never clash. Pass
            ``prometheus_client.REGISTRY`` to join the process's default registry.
        namespace: the metric name prefix.
        max_label_values: distinct values kept per label before later ones become ``"other"``
            (env ``GRAPHTHRIFT_METRICS_MAX_LABEL_VALUES``, default 50).
        label_names: the record tags used as labels, from ``tenant_id``, ``feature``,
            ``node``, ``route``, ``model`` and ``prompt_version``.
        latency_buckets: histogram buckets of ``llm_latency_seconds``, in seconds.

    Example:
        >>> metrics = PrometheusMetrics(ledger, max_label_values=100)
        >>> server = metrics.serve(9464)
        >>> print(metrics.text())  # the exposition text, without HTTP
    """

    def __init__(
        self,
        ledger: Ledger | None = None,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "graphthrift",
        max_label_values: int | None = None,
        label_names: Sequence[str] = DEFAULT_LABELS,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", namespace or ""):
            raise ValueError(f"namespace must be a metric name prefix, got {namespace!r}")
        if isinstance(label_names, str):
            raise TypeError("label_names must be a sequence of tag names, not one string")
        labels = tuple(label_names)
        _check_labels(labels)
        if max_label_values is None:
            max_label_values = env_int("GRAPHTHRIFT_METRICS_MAX_LABEL_VALUES", 50, minimum=1)
        self.limiter = LabelLimiter(max_label_values)
        self.max_label_values = max_label_values
        self.label_names = labels
        self.namespace = namespace
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._ledgers: list[Ledger] = []
        self._servers: list[WSGIServer] = []
        self._observed = 0
        self._count_lock = threading.Lock()

        def counter(name: str, doc: str, extra: Sequence[str] = ()) -> Counter:
            return Counter(
                name, doc, (*labels, *extra), namespace=namespace, registry=self.registry
            )

        self._cost = counter("cost_usd", "LLM spend in US dollars, as priced by the ledger.")
        self._saved = counter(
            "saved_usd", "US dollars saved by cache hits, compression and pruning.", ("layer",)
        )
        self._overspent = counter(
            "overspent_usd", "US dollars a layer cost beyond what it saved.", ("layer",)
        )
        self._saved_tokens = counter(
            "saved_tokens", "Tokens not sent thanks to compression and pruning.", ("layer",)
        )
        self._tokens = counter(
            "tokens", "LLM tokens by type (input, output, cached, reasoning).", ("type",)
        )
        self._requests = counter("llm_requests", "LLM calls by outcome.", ("success", "error_type"))
        self._cache_hits = counter(
            "cache_hits", "Cache hits booked in the ledger, per tenant.", ("layer",)
        )
        self._latency = Histogram(
            "llm_latency_seconds",
            "LLM call latency in seconds.",
            labels,
            namespace=namespace,
            registry=self.registry,
            buckets=tuple(latency_buckets),
        )
        route_labels = tuple(name for name in labels if name != "route")
        self._routes = Counter(
            "route",
            "Routed requests by route (cheap or escalated) and escalation reason.",
            (*route_labels, "route", "reason"),
            namespace=namespace,
            registry=self.registry,
        )
        self._route_labels = route_labels
        self._diagnostics = _DiagnosticsCollector(namespace)
        self.registry.register(self._diagnostics)
        if ledger is not None:
            self.attach(ledger)

    # -- wiring ------------------------------------------------------------------------------

    def serve(self, port: int | None = None, addr: str | None = None) -> WSGIServer:
        """Serve ``/metrics`` over HTTP on a daemon thread and return the server.

        Args:
            port: the TCP port (0 picks a free one: read ``server.server_port``); env
                ``GRAPHTHRIFT_METRICS_PORT``, default 9464.
            addr: the address to bind; env ``GRAPHTHRIFT_METRICS_ADDR``, default loopback
                ``127.0.0.1``. Bind ``0.0.0.0`` only where the network is trusted: the
                labels name tenants and features.

        Returns:
            The ``WSGIServer``; ``server.shutdown()`` then ``server.server_close()`` stop it
            (``close()`` does both for every server this instance started).
        """
        if port is None:
            port = env_int("GRAPHTHRIFT_METRICS_PORT", 9464, minimum=0)
        if addr is None:
            addr = env_str("GRAPHTHRIFT_METRICS_ADDR") or "127.0.0.1"
        server, _thread = start_http_server(port, addr, registry=self.registry)
        self._servers.append(server)
        return server

    def close(self) -> None:
        """Detach from every ledger and stop every server started by ``serve``."""
        self.detach()
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.server_close()

    def text(self) -> str:
        """The current exposition text (what a scrape of ``/metrics`` returns)."""
        return generate_latest(self.registry).decode("utf-8")

    @property
    def observed(self) -> int:
        """How many ledger records these metrics have taken in."""
        with self._count_lock:
            return self._observed

    # -- the listener ------------------------------------------------------------------------

    def observe(self, records: Iterable[LedgerRecord]) -> None:
        """Count ``records`` (priced ledger records); what the ledger calls after each batch.

        One record that cannot be counted is counted as ``metrics_record_failure`` and
        skipped; the rest of the batch still counts.
        """
        n = 0
        for record in records:
            n += 1
            try:
                self._observe_one(record)
            except Exception as exc:
                diagnostics.count(
                    "metrics_record_failure", "graphthrift: metrics skipped a record: %r", exc
                )
        with self._count_lock:
            self._observed += n

    def _labels(self, record: LedgerRecord) -> list[str]:
        return [self.limiter(name, getattr(record, name)) for name in self.label_names]

    def _observe_one(self, record: LedgerRecord) -> None:
        kind = record.kind
        if kind == "route":
            self._observe_route(record)
            return
        labels = self._labels(record)
        cost = record.cost_usd
        if cost is not None and (kind == "llm" or cost > 0):
            self._cost.labels(*labels).inc(cost)
        if kind == "llm":
            self._observe_llm(record, labels)
            return
        layer = self.limiter("layer", record.layer or kind)
        if kind == "cache_hit":
            self._cache_hits.labels(*labels, layer).inc()
        saved = record.saved_usd
        if saved is not None and saved > 0:
            self._saved.labels(*labels, layer).inc(saved)
        elif saved is not None and saved < 0:
            self._overspent.labels(*labels, layer).inc(-saved)
        if record.saved_tokens:
            self._saved_tokens.labels(*labels, layer).inc(record.saved_tokens)

    def _observe_llm(self, record: LedgerRecord, labels: list[str]) -> None:
        for token_type, field in _TOKEN_TYPES:
            value = getattr(record, field)
            if value:
                self._tokens.labels(*labels, token_type).inc(value)
        error_type = "" if record.success else (record.error_type or "other")
        self._requests.labels(*labels, "true" if record.success else "false", error_type).inc()
        if record.latency_ms is not None:
            self._latency.labels(*labels).observe(record.latency_ms / 1000.0)

    def _observe_route(self, record: LedgerRecord) -> None:
        reason = (record.extra or {}).get("reason") if record.route != "cheap" else None
        self._routes.labels(
            *(self.limiter(name, getattr(record, name)) for name in self._route_labels),
            self.limiter("route", record.route),
            self.limiter("reason", reason),
        ).inc()

    def __repr__(self) -> str:
        return (
            f"PrometheusMetrics(namespace={self.namespace!r}, labels={list(self.label_names)}, "
            f"max_label_values={self.max_label_values}, ledgers={len(self._ledgers)})"
        )


class _DiagnosticsCollector(Collector):
    """Exports ``graphthrift.diagnostics`` counters at scrape time."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._events = LabelLimiter(_MAX_EVENTS)

    def collect(self) -> Iterator[Metric]:
        ns = self.namespace
        cache = CounterMetricFamily(
            f"{ns}_cache_requests",
            "Cache lookups by layer and result (hit or miss), process-wide.",
            labels=("layer", "result"),
        )
        budget = CounterMetricFamily(
            f"{ns}_budget_violations",
            "Budget refusals by limit (max_usd, max_tokens, max_request_usd, ...).",
            labels=("limit",),
        )
        fail_open = CounterMetricFamily(
            f"{ns}_fail_open",
            "Events graphthrift tolerated instead of raising (graphthrift.diagnostics).",
            labels=("event",),
        )
        budgets: dict[str, int] = {}
        events: dict[str, int] = {}
        for name, value in sorted(diagnostics.counters().items()):
            cache_result = _cache_result(name)
            if cache_result is not None:
                cache.add_metric(cache_result, value)
            elif name == _BUDGET_PREFIX or name.startswith(_BUDGET_PREFIX + "_"):
                limit = name[len(_BUDGET_PREFIX) + 1 :] or "unspecified"
                budgets[limit] = budgets.get(limit, 0) + value
            else:
                event = self._events("event", name)
                events[event] = events.get(event, 0) + value
        for limit, value in budgets.items():
            budget.add_metric((limit,), value)
        for event, value in events.items():
            fail_open.add_metric((event,), value)
        yield cache
        yield budget
        yield fail_open


def _cache_result(name: str) -> tuple[str, str] | None:
    """``cache_semantic_hit`` -> ``("semantic", "hit")``; None for other counters."""
    if not name.startswith("cache_"):
        return None
    layer, _, result = name[len("cache_") :].rpartition("_")
    if result in ("hit", "miss") and layer:
        return layer, result
    return None


def _check_labels(labels: tuple[str, ...]) -> None:
    for name in labels:
        if name in _UNBOUNDED:
            raise ValueError(
                f"{name} cannot be a metrics label: it has a new value every run or thread, "
                "which would grow Prometheus without bound; query the ledger for it instead"
            )
        if name not in LABELABLE:
            raise ValueError(f"unknown label {name!r}; choose from {', '.join(LABELABLE)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"label_names has duplicates: {list(labels)}")
