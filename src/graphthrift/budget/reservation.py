"""A call's worst case (``Estimate``) and the amount held for it (``Reservation``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from graphthrift.budget.store import ScopeRef

__all__ = ["Estimate", "Reservation"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst case of one call: counted input plus the maximum output, priced."""

    model: str
    input_tokens: int
    output_tokens: int
    usd: float | None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Reservation:
    """An amount held on each scope until ``settle`` or ``release``.

    ``backed`` is False when the database was unreachable and the budget failed open.
    """

    id: str
    estimate: Estimate
    scopes: tuple[ScopeRef, ...]
    usd: float
    tokens: int
    backed: bool = True
    forced: bool = False
    settled: bool = False
    #: released by a drain while its call may still run: a later ``settle`` still books it
    drained: bool = False
    actual_usd: float | None = None
    actual_tokens: int | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def max_output_tokens(self) -> int:
        """The output tokens this reservation holds: cap the model call's output at this.

        A call that produces more than it reserved could push concurrent runs past the
        limit by more than one reservation, so adapters pass it as the call's max_tokens.
        """
        return self.estimate.output_tokens

    def as_state(self) -> dict[str, Any]:
        """A JSON-safe dict (for graph state), readable by ``Budget.reservation_from_state``."""
        return {
            "id": self.id,
            "model": self.estimate.model,
            "input_tokens": self.estimate.input_tokens,
            "output_tokens": self.estimate.output_tokens,
            "estimate_usd": self.estimate.usd,
            "scopes": [[s.kind, s.key, s.day.isoformat()] for s in self.scopes],
            "usd": self.usd,
            "tokens": self.tokens,
            "backed": self.backed,
            "forced": self.forced,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Reservation:
        est = Estimate(
            data["model"], data["input_tokens"], data["output_tokens"], data["estimate_usd"]
        )
        scopes = tuple(ScopeRef(k, key, date.fromisoformat(d)) for k, key, d in data["scopes"])
        return cls(
            data["id"], est, scopes, data["usd"], data["tokens"], data["backed"], data["forced"]
        )
