"""The cost record: one row of the ledger per LLM call or per saving.

Every mechanism writes the same record, so one report can say what was spent and what each
layer saved. ``kind`` tells them apart:

- ``llm``: a model call (including a summarizer's or a router's call);
- ``cache_hit``: a call answered from a cache (``saved_usd`` is what the call would have cost);
- ``compression`` / ``pruning``: tokens removed before a call (``saved_tokens``, ``saved_usd``).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from graphthrift import diagnostics
from graphthrift.text.repair import clean_json, clean_text, needs_repair

ErrorType = Literal["timeout", "rate_limit", "bad_request", "upstream", "other"]
ERROR_TYPES: tuple[str, ...] = ("timeout", "rate_limit", "bad_request", "upstream", "other")
UsageSource = Literal["provider", "estimated", "none"]

TAG_FIELDS: tuple[str, ...] = (
    "tenant_id",
    "feature",
    "route",
    "prompt_version",
    "model",
    "node",
    "thread_id",
    "run_id",
)
TOKEN_FIELDS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
)
# A single call above this is not plausible from any provider today; such a number is
# treated as a reporting bug, not as spend.
MAX_PLAUSIBLE_TOKENS = 50_000_000
_TEXT_LIMIT = 512
# every free-text column of the record: what repair() scans for NUL bytes and surrogates
_TEXT_FIELDS: tuple[str, ...] = (
    "kind",
    *TAG_FIELDS,
    "call_id",
    "error_type",
    "usage_source",
    "layer",
)


@dataclass(slots=True)
class LedgerRecord:
    """One ledger row. Only ``kind`` is needed; everything else has a neutral default."""

    kind: str = "llm"
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    tenant_id: str | None = None
    feature: str | None = None
    route: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    node: str | None = None
    thread_id: str | None = None
    run_id: str | None = None
    call_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: input tokens written to the provider's prompt cache (1-hour part in extra, see calls)
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    #: list price of the call minus cost_usd: what the provider's prompt cache saved
    cache_savings_usd: float | None = None
    saved_usd: float | None = None
    saved_tokens: int = 0
    latency_ms: float | None = None
    success: bool = True
    error_type: str | None = None
    usage_source: str = "provider"
    retry: bool = False
    attempt: int = 1
    streamed: bool = False
    layer: str | None = None
    extra: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.repair()
        self.validate()

    def repair(self) -> None:
        """Make every text and ``extra`` value storable, counting each repair.

        A NUL byte or lone surrogate in one tag would make PostgreSQL refuse the whole batch
        the record is written in, and a value JSON cannot hold in ``extra`` would stop a
        spill midway; both are repaired here (see ``graphthrift.text.repair``) instead of raised.
        The ledger calls it again before writing, for records changed after construction.
        """
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and needs_repair(value):
                setattr(self, name, clean_text(value, f"LedgerRecord.{name}"))
        if self.extra is not None:
            if not isinstance(self.extra, dict):
                diagnostics.count(
                    "json_repaired",
                    "graphthrift: LedgerRecord.extra is a %s, not a dict; kept as {'value': ...}",
                    type(self.extra).__name__,
                )
                self.extra = {"value": self.extra}
            self.extra = clean_json(self.extra, "LedgerRecord.extra")

    def validate(self) -> None:
        """Reject values that would corrupt totals, naming the field at fault."""
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"LedgerRecord.kind must be a non-empty string, got {self.kind!r}")
        for name in (*TOKEN_FIELDS, "saved_tokens", "attempt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"LedgerRecord.{name} must be an int, got {type(value).__name__} {value!r}"
                )
            if value < 0:
                raise ValueError(f"LedgerRecord.{name} must be >= 0, got {value}")
            if value > MAX_PLAUSIBLE_TOKENS:
                raise ValueError(f"LedgerRecord.{name}={value} is not a plausible token count")
        for name in ("cost_usd", "saved_usd", "cache_savings_usd", "latency_ms"):
            value = getattr(self, name)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"LedgerRecord.{name} must be a finite number or None, got {value!r}"
                )
            if name in ("cost_usd", "latency_ms") and value < 0:
                raise ValueError(f"LedgerRecord.{name} must be >= 0, got {value}")
        if self.error_type is not None and self.error_type not in ERROR_TYPES:
            raise ValueError(
                f"LedgerRecord.error_type must be one of {ERROR_TYPES}, got {self.error_type!r}"
            )
        if self.ts.tzinfo is None:
            raise ValueError("LedgerRecord.ts must be timezone-aware (UTC)")

    def as_row(self) -> dict[str, Any]:
        """The record as a dict of column values."""
        return asdict(self)


RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRecord))


def clean_tag(name: str, value: Any) -> str | None:
    """Coerce a tag from untrusted metadata to text, counting values of the wrong type.

    Metadata comes from users' configs: a tenant id may arrive as an int or a UUID, which
    we keep as text; a dict or list is not a tag, so it is dropped with a counted warning
    instead of failing the user's call.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value[:_TEXT_LIMIT], f"tag {name}")
    if isinstance(value, bool):
        diagnostics.count(
            "bad_tag_type", "graphthrift: tag %s has a bool value; stored as text", name
        )
        return str(value).lower()
    if isinstance(value, int | float | uuid.UUID):
        return str(value)[:_TEXT_LIMIT]
    diagnostics.count(
        "bad_tag_type",
        "graphthrift: tag %s has a %s value; it was dropped",
        name,
        type(value).__name__,
    )
    return None


def plausible_tokens(name: str, value: Any, *, fallback: str = "estimating instead") -> int | None:
    """A provider's token count if it is a sane integer, else None with a counted warning."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not value.is_integer())
    ):
        diagnostics.count(
            "bad_usage", "graphthrift: provider reported %s=%r; %s", name, value, fallback
        )
        return None
    number = int(value)
    if number < 0 or number > MAX_PLAUSIBLE_TOKENS:
        diagnostics.count(
            "bad_usage", "graphthrift: provider reported %s=%r; %s", name, value, fallback
        )
        return None
    return number
