"""What the ledger's queue holds: records, or builders the writer thread runs, and their size.

The queue is capped in bytes, so each item carries an estimate of the memory it holds.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from graphthrift import diagnostics
from graphthrift.ledger.records import LedgerRecord

_RECORD_OVERHEAD = 400  # bytes a queued LedgerRecord costs beyond its text (measured ~350)
_DEFERRED_SIZE = 1024  # a deferred builder's closure: its size is unknown until it runs


def _materialise(batch: list[Any]) -> list[Any]:
    """Build deferred records in place; a builder that fails is counted and left out."""
    out: list[Any] = []
    for item in batch:
        if isinstance(item, LedgerRecord | _Skipped):
            out.append(item)
            continue
        try:
            record = item()
        except Exception as exc:
            diagnostics.count(
                "ledger_build_failure", "graphthrift: building a ledger record failed: %r", exc
            )
            out.append(_Skipped())
            continue
        out.append(record if isinstance(record, LedgerRecord) else _Skipped())
    return out


class _Skipped:
    """Placeholder for a deferred record that produced nothing: counted as handled."""


def _size(item: Any) -> int:
    """Roughly the memory a queued item holds: its text and ``extra`` plus fixed overhead."""
    if not isinstance(item, LedgerRecord):
        return _DEFERRED_SIZE
    size = _RECORD_OVERHEAD
    for name in _TEXT_COLUMNS:
        value = getattr(item, name)
        if isinstance(value, str):
            size += len(value)
    if item.extra:
        size += len(repr(item.extra))
    return size


_TEXT_COLUMNS = tuple(
    f.name for f in fields(LedgerRecord) if f.type in ("str | None", "str") and f.name != "kind"
)
