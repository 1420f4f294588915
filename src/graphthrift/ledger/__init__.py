"""The cost ledger: one record per model call, its usage, price, metrics and OTel spans."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "CallRecorder": ".calls",
    "DEFAULT_LABELS": ".metrics",
    "LATENCY_BUCKETS": ".metrics",
    "LabelLimiter": ".metrics",
    "Ledger": ".ledger",
    "LedgerFlushTimeout": ".ledger",
    "LedgerObserver": ".observer",
    "LedgerRecord": ".records",
    "OTHER": ".metrics",
    "OtelExporter": ".otel",
    "Price": ".prices",
    "PriceBook": ".prices",
    "PricingRules": ".prices",
    "PrometheusMetrics": ".metrics",
    "Usage": ".usage",
    "clean_tag": ".records",
    "cost_usd": ".prices",
    "default_price_book": ".prices",
    "plausible_tokens": ".records",
    "provider_name": ".otel",
    "read_usage": ".usage",
    "set_price": ".prices",
    "set_pricing_rules": ".prices",
    "split_model_ref": ".prices",
    "trace_id_for_run": ".otel",
    "PartitionReport": ".partitions",
    "maintain_partitions": ".partitions",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .calls import CallRecorder as CallRecorder
    from .ledger import Ledger as Ledger
    from .ledger import LedgerFlushTimeout as LedgerFlushTimeout
    from .metrics import DEFAULT_LABELS as DEFAULT_LABELS
    from .metrics import LATENCY_BUCKETS as LATENCY_BUCKETS
    from .metrics import OTHER as OTHER
    from .metrics import LabelLimiter as LabelLimiter
    from .metrics import PrometheusMetrics as PrometheusMetrics
    from .observer import LedgerObserver as LedgerObserver
    from .otel import OtelExporter as OtelExporter
    from .otel import provider_name as provider_name
    from .otel import trace_id_for_run as trace_id_for_run
    from .partitions import PartitionReport as PartitionReport
    from .partitions import maintain_partitions as maintain_partitions
    from .prices import Price as Price
    from .prices import PriceBook as PriceBook
    from .prices import PricingRules as PricingRules
    from .prices import cost_usd as cost_usd
    from .prices import default_price_book as default_price_book
    from .prices import set_price as set_price
    from .prices import set_pricing_rules as set_pricing_rules
    from .prices import split_model_ref as split_model_ref
    from .records import LedgerRecord as LedgerRecord
    from .records import clean_tag as clean_tag
    from .records import plausible_tokens as plausible_tokens
    from .usage import Usage as Usage
    from .usage import read_usage as read_usage
