"""Booking what a compression saved: the ledger row, and savings held until the model call.

A compression saves input tokens of the call that follows it: priced at that call's model,
and only if that call happens. When the answer comes from a cache instead, the cache books
the whole call, and the compression saving must not be booked as well (each saving once).
So an adapter may hold the saving here until it knows: ``book_savings`` prices it at the
model actually called, ``drop_savings`` forgets it. A saving nobody resolves within
``_PENDING_TTL_S`` (or pushed out by ``_PENDING_MAX``) is booked at the compressor's model.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from graphthrift import diagnostics
from graphthrift.compress.result import CompressionResult
from graphthrift.ledger.records import TAG_FIELDS, LedgerRecord, clean_tag

__all__ = [
    "book_savings",
    "compression_record",
    "defer_saving",
    "drop_savings",
    "flush_savings",
    "write_saving",
]


def compression_record(
    result: CompressionResult,
    *,
    model: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> LedgerRecord:
    """The ledger row for one compression: ``saved_tokens`` is what it removed.

    ``model`` is the downstream model the saving is priced at (the ledger prices it);
    ``tags`` may hold any ledger tag (tenant_id, feature, node, thread_id, ...).
    """
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {
        "compressor": result.compressor,
        "kept_tokens": result.kept_tokens,
        "budget": result.budget,
        "chunks": len(result.texts),
        "kept_chunks": len(result.indices),
    }
    for key, value in (tags or {}).items():
        if key in TAG_FIELDS:
            values[key] = clean_tag(key, value)
        elif value is not None:
            extra.setdefault("tags", {})[key] = str(value)[:200]
    values["model"] = model or values.get("model") or result.model
    return LedgerRecord(
        kind="compression",
        layer="compression",
        input_tokens=result.original_tokens,
        saved_tokens=result.removed_tokens,
        latency_ms=round(result.elapsed_ms, 3),
        usage_source="estimated",
        extra=extra,
        **values,
    )


_PENDING_MAX = 10_000
_PENDING_TTL_S = 3600.0
_PENDING: OrderedDict[str, tuple[Any, LedgerRecord, float]] = OrderedDict()
_PENDING_LOCK = threading.Lock()
_AT_EXIT: list[bool] = []


def write_saving(ledger: Any, record: LedgerRecord) -> None:
    """Write one saving; a closed or failing ledger is counted, never raised to the user."""
    try:
        ledger.record(record)
    except Exception as exc:  # a closed ledger must not fail the user's request
        diagnostics.count(
            "compression_ledger_error", "graphthrift: compression not recorded: %s", exc
        )


def _expire(now: float) -> list[tuple[Any, LedgerRecord]]:
    out = []
    while _PENDING:
        key, (ledger, record, born) = next(iter(_PENDING.items()))
        if len(_PENDING) <= _PENDING_MAX and now - born < _PENDING_TTL_S:
            break
        del _PENDING[key]
        out.append((ledger, record))
    return out


def defer_saving(record: LedgerRecord, ledger: Any) -> str:
    """Hold a compression's ledger row until the call it shrank is known; return its key."""
    key = f"cs-{id(record):x}-{time.monotonic_ns():x}"
    now = time.monotonic()
    if not _AT_EXIT:  # registered after the ledger's own hook, so it runs before it closes
        _AT_EXIT.append(True)
        atexit.register(flush_savings)
    with _PENDING_LOCK:
        _PENDING[key] = (ledger, record, now)
        stale = _expire(now)
    for target, old in stale:
        write_saving(target, old)
    return key


def book_savings(keys: Iterable[str], model: str | None) -> int:
    """Book the held savings, priced at ``model`` (the model actually called); return how many."""
    found = []
    with _PENDING_LOCK:
        for key in keys:
            item = _PENDING.pop(str(key), None)
            if item is not None:
                found.append(item)
    for ledger, record, _ in found:
        if model:
            record.model = clean_tag("model", model)
            record.saved_usd = None  # the ledger prices it at this model
        write_saving(ledger, record)
    return len(found)


def flush_savings() -> int:
    """Book every held saving at its compressor's model (no call was seen for it); at exit
    too, so a graph without a booking node loses nothing."""
    with _PENDING_LOCK:
        items = list(_PENDING.values())
        _PENDING.clear()
    for ledger, record, _ in items:
        write_saving(ledger, record)
    return len(items)


def drop_savings(keys: Iterable[str]) -> int:
    """Forget held savings whose call never ran (a cache served the answer); return how many."""
    dropped = 0
    with _PENDING_LOCK:
        for key in keys:
            dropped += _PENDING.pop(str(key), None) is not None
    if dropped:
        diagnostics.count("compression_saving_superseded")
    return dropped
