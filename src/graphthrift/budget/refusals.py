"""Budget refusals as ledger rows, so ``graphthrift alerts`` can watch them rise.

Each refusal a budget makes (the ladder's stop, a ``reserve`` that raises, a tool call a
tool budget refused) becomes one ``kind="refusal"`` row carrying the run's tags and the
limit's name. Writing it fails open: a ledger failure is counted and logged and never
changes the refusal itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graphthrift import diagnostics
from graphthrift.ledger.records import LedgerRecord

if TYPE_CHECKING:
    from graphthrift.ledger.ledger import Ledger

#: Run tags a refusal row carries (the ledger's tag columns; ``user_id`` has none).
REFUSAL_TAG_KEYS: tuple[str, ...] = (
    "tenant_id",
    "feature",
    "route",
    "prompt_version",
    "thread_id",
    "run_id",
    "node",
)


def refusal_row(limit_name: str, tags: Mapping[str, Any], model: str | None = None) -> LedgerRecord:
    """The ``kind="refusal"`` row of one refusal of ``limit_name`` under the run's ``tags``."""
    fields = {k: str(tags[k]) for k in REFUSAL_TAG_KEYS if tags.get(k) not in (None, "")}
    return LedgerRecord(
        kind="refusal",
        success=False,
        layer="budget",
        model=model,
        extra={"limit": limit_name},
        **fields,  # type: ignore[arg-type]
    )


def record_refusal(
    ledger: Ledger | None,
    limit_name: str,
    tags: Mapping[str, Any] | None,
    model: str | None = None,
) -> None:
    """Write one refusal row to ``ledger`` (if any); fail open on any ledger error."""
    if ledger is None:
        return
    try:
        ledger.record(refusal_row(limit_name, tags or {}, model))
    except Exception as exc:
        diagnostics.count(
            "budget_ledger_failure",
            "graphthrift: could not write a budget refusal to the ledger (%s); refusing anyway",
            repr(exc),
        )
