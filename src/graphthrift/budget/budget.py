"""Pre-flight budgets: reserve a call's worst-case cost before it runs, settle it after.

A ``Budget`` combines limits of three kinds:

- per step (checked in process): ``max_tool_calls_per_step``, ``max_input_tokens`` and
  ``max_output_tokens`` (which is also the output reserved for each call);
- per request: ``max_request_usd``, the estimated cost of one call;
- per scope: ``max_usd`` and ``max_tokens``, dicts keyed by ``"tenant"``, ``"feature"``,
  ``"thread"`` or ``"run"``. Tenant, feature and thread counters are per **UTC day** (the
  day starts at 00:00 UTC whatever the server's or the user's time zone); run counters last
  for the run.

Before a model call, ``reserve`` estimates it (counted input tokens plus the maximum output
tokens, at the model's price) and reserves that amount on every scope in one PostgreSQL
transaction, with a conditional upsert per scope. Concurrent runs of one tenant therefore
cannot together pass its limit: they overspend only by what actual usage exceeds the
reservations (none when calls stay within their ``max_output_tokens``). ``settle`` moves the
reservation to spent with the actual usage (a ``LedgerRecord``, token counts, or every
``(model, usage)`` call it covered), priced at the model actually called, and releases the
rest. Real cost is settled even past the limit, so the next reservation is refused: with a
model that ignores its cap, spend stays below ``limit + concurrency x (the most one call
cost)`` (counted as ``budget_output_overrun``).

Every limited scope needs its tag (``run_id`` for ``"run"``...): a call without it raises
``BudgetScopeMissing`` rather than share one ``(none)`` bucket with every untagged run. The
adapters derive the run scope from the run itself. Spend settled while the store was down
is kept (bounded, ``max_pending``) and charged when the store answers again. Counters live in the database, so
budgets survive restarts; a reservation left by a crashed process expires after
``reservation_ttl`` seconds and is reclaimed.

When a reservation is refused, ``next_step`` picks the next applicable rung of the
degradation ladder (``compress``, ``cheaper_model``, ``summarize``, ``interrupt``, ``end``);
the adapters carry it out. When no rung is left, the call raises ``BudgetExceeded``.

If the database is unreachable the budget fails open by default (the call proceeds and
``diagnostics`` counter ``budget_store_failure`` is incremented); ``fail_closed=True``
raises ``StoreUnavailable`` instead.

Environment: ``GRAPHTHRIFT_BUDGET_FAIL_CLOSED`` (``1``/``true``),
``GRAPHTHRIFT_BUDGET_RESERVATION_TTL`` (seconds, default 600),
``GRAPHTHRIFT_BUDGET_OUTPUT_TOKENS`` (output reserved when no max is known, default 1024).

Example:
    >>> budget = Budget(store, max_usd={"tenant": 5.0}, max_output_tokens=512)
    >>> r = budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}],
    ...                    tags={"tenant_id": "acme"})
    >>> budget.settle(r, input_tokens=9, output_tokens=40)
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from graphthrift import diagnostics
from graphthrift.budget.store import (
    RUN_DAY,
    Refusal,
    ScopeRef,
    ScopeUsage,
    read_program,
    reclaim_program,
    reserve_program,
    run_async,
    run_sync,
    settle_program,
)
from graphthrift.config import env_flag, env_float
from graphthrift.errors import (
    BudgetExceeded,
    GraphthriftError,
    StoreUnavailable,
    UnknownModelPrice,
)
from graphthrift.ledger.prices import PriceBook, default_price_book
from graphthrift.ledger.records import LedgerRecord
from graphthrift.store.postgres import Store
from graphthrift.text.tokens import count_messages

__all__ = [
    "DEFAULT_LADDER",
    "LADDER_STEPS",
    "SCOPE_KINDS",
    "Budget",
    "BudgetExceeded",
    "BudgetScopeMissing",
    "Estimate",
    "Preflight",
    "Reservation",
    "ScopeUsage",
    "Shortfall",
    "Step",
    "tags_from_metadata",
]

Step = Literal["compress", "cheaper_model", "summarize", "interrupt", "end"]
LADDER_STEPS: tuple[Step, ...] = ("compress", "cheaper_model", "summarize", "interrupt", "end")
DEFAULT_LADDER: tuple[Step, ...] = ("compress", "cheaper_model", "summarize", "end")
SCOPE_KINDS: tuple[str, ...] = ("run", "thread", "tenant", "feature")
_TAG_OF_SCOPE = {
    "run": "run_id",
    "thread": "thread_id",
    "tenant": "tenant_id",
    "feature": "feature",
}
_INPUT_SHRINKERS = ("compress", "summarize")
_TOKEN_LIMITS = ("max_tokens", "max_input_tokens")


def tags_from_metadata(*sources: Mapping[str, Any] | None) -> dict[str, str]:
    """tenant_id, feature, thread_id and run_id from config metadata/configurable dicts.

    Later sources win; values are kept as text. Reads through the adapter kernel
    (``graphthrift.kernel.run_tags``), so every adapter agrees on what a tag is.
    """
    from graphthrift.kernel import run_tags

    out: dict[str, str] = {}
    for source in sources:
        if not source:
            continue
        found = run_tags({"metadata": source})
        for name in _TAG_OF_SCOPE.values():
            if name in found:
                out[name] = str(found[name])
    return out


class BudgetScopeMissing(GraphthriftError, ValueError):
    """A budget limits a scope (e.g. ``max_usd={"run": ...}``) but the call has no tag for it.

    A call without its scope's tag must never fall into one bucket shared by every untagged
    run, tenant or process (issue 11, item 1), so it is refused instead. The adapters always
    find a run scope (``Budget`` docs, "Run scope"); core callers pass ``tags={"run_id": ...}``.
    """

    def __init__(self, scope_kind: str, tag: str) -> None:
        self.scope_kind = scope_kind
        self.tag = tag
        super().__init__(
            f"the budget limits the {scope_kind!r} scope but this call has no {tag!r} tag; "
            f"pass tags={{{tag!r}: ...}} (the adapters derive run_id from the run itself)"
        )


def _scope_key(kind: str, value: Any) -> str:
    """A scope's key as text; a missing tag or a character PostgreSQL cannot store is refused
    with a clear error (never a shared ``(none)`` bucket, never a raw ``DataError``)."""
    tag = _TAG_OF_SCOPE[kind]
    if value is None or value == "":
        raise BudgetScopeMissing(kind, tag)
    key = str(value)
    if "\x00" in key:
        raise ValueError(
            f"budget tag {tag} contains a NUL character at {key.index(chr(0))}: {key!r}"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"budget tag {tag} contains a lone surrogate at {exc.start}: {key!r}"
        ) from None
    return key


def _check_settle_cost(value: Any) -> float | None:
    """A settle's ``cost_usd``: a finite number >= 0, else a clear, counted error.

    A negative cost would let a tenant spend past its limit, a NaN or inf would lock it out
    for the day (issue 12, item 8); the reservation stays open (and expires) instead.
    """
    if value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if not bad and math.isfinite(value) and value >= 0:
        return float(value)
    diagnostics.count("budget_bad_settle")
    raise ValueError(f"settle cost_usd must be a finite number >= 0, got {value!r}")


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


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a reservation was refused: the limit, what its scope holds, what was asked."""

    limit_name: str
    scope: str
    limit: float
    spent: float
    requested: float
    scope_kind: str = "step"

    def __post_init__(self) -> None:
        # Every refusal is observable (Prometheus graphthrift_budget_violations_total).
        diagnostics.count(f"budget_refusal_{self.limit_name}")

    @property
    def remaining(self) -> float:
        return max(self.limit - self.spent, 0.0)

    def error(self) -> BudgetExceeded:
        """The ``BudgetExceeded`` to raise for this shortfall."""
        return BudgetExceeded(self.limit_name, self.limit, self.spent, self.scope, self.requested)

    def interrupt_payload(self) -> dict[str, Any]:
        """What a human is shown when a run pauses on this shortfall (LangGraph ``interrupt``)."""
        return {
            "type": "budget",
            "limit_name": self.limit_name,
            "scope": self.scope,
            "limit": self.limit,
            "spent": self.spent,
            "requested": self.requested,
            "question": "Approve this model call past the budget? Resume with True to approve.",
        }

    @staticmethod
    def approved(answer: Any) -> bool:
        """Whether a human's resume value approves the call (True, "approve" or "yes")."""
        return answer is True or (isinstance(answer, str) and answer.lower() in ("approve", "yes"))

    def message(self) -> str:
        """A sentence for the user when the run ends on this shortfall."""
        return (
            f"I have to stop here: the {self.limit_name} budget for {self.scope} is used up "
            f"(limit {self.limit:g}, spent {self.spent:g}, this step needs {self.requested:g})."
        )


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


@dataclass(slots=True)
class Preflight:
    """What ``Budget.preflight`` decided for one call.

    ``outcome`` is ``"proceed"`` (call ``model`` with ``messages``, then settle
    ``reservation``) or ``"end"`` (stop cleanly; ``shortfall`` says why). ``steps`` lists
    the ladder rungs carried out, in order.
    """

    outcome: Literal["proceed", "end"]
    model: str
    messages: list[Any]
    steps: list[str]
    reservation: Reservation | None
    shortfall: Shortfall | None


def _positive(name: str, value: Any, *, integer: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Budget {name} must be a number, got {type(value).__name__} {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"Budget {name} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Budget {name} must be > 0, got {value!r}; leave it out (None) for no limit"
        )
    return int(value) if integer else float(value)


def _scope_limits(name: str, value: Mapping[str, Any] | None, *, integer: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"Budget {name} must be a dict keyed by scope {SCOPE_KINDS}, got {value!r}")
    out: dict[str, Any] = {}
    for kind, limit in value.items():
        if kind not in SCOPE_KINDS:
            raise ValueError(f"Budget {name} has unknown scope {kind!r}; use one of {SCOPE_KINDS}")
        out[kind] = _positive(f"{name}[{kind!r}]", limit, integer=integer)
    return out


def utc_day(moment: datetime) -> date:
    """The UTC calendar day of ``moment`` (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


class Budget:
    """Pre-flight token, tool and cost limits with a degradation ladder.

    Args:
        store: the shared ``Store``; needed for ``max_usd``/``max_tokens`` (scope limits).
        max_usd: USD per scope, e.g. ``{"tenant": 5.0, "run": 0.25}`` (per UTC day; per run
            for ``"run"``).
        max_tokens: tokens (input + output) per scope, keyed the same way.
        max_request_usd: the most one call may be estimated to cost.
        max_input_tokens: the most input tokens one call (step) may send.
        max_output_tokens: the most output tokens one call may produce; reserved per call.
        max_tool_calls_per_step: the most tool calls one model turn may run.
        max_tool_calls_per_run: the most tool calls one run (agent invocation) may run;
            ``ToolBudgetMiddleware`` enforces it (``allowed_tool_calls``).
        ladder: degradation rungs tried in order before a stop (subset of ``LADDER_STEPS``).
        fail_closed: raise ``StoreUnavailable`` when the database is unreachable (default:
            proceed and count ``budget_store_failure``).
        reservation_ttl: seconds before an unsettled reservation is reclaimed.
        default_output_tokens: output reserved when neither the call nor the budget caps it.
        prices: the ``PriceBook`` (default: the process-wide one the ledger uses).
        clock: returns the current time (UTC days are taken from it); for tests.
        max_pending: settlements kept in process while the store is unreachable, charged
            when it answers again (default 10,000; older ones are dropped and counted).

    Raises:
        ValueError / TypeError: a limit that is zero, negative, not finite or of a wrong type.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        max_usd: Mapping[str, float] | None = None,
        max_tokens: Mapping[str, int] | None = None,
        max_request_usd: float | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        max_tool_calls_per_step: int | None = None,
        ladder: Sequence[str] | None = None,
        fail_closed: bool | None = None,
        reservation_ttl: float | None = None,
        default_output_tokens: int | None = None,
        prices: PriceBook | None = None,
        clock: Callable[[], datetime] | None = None,
        max_pending: int | None = None,
        max_tool_calls_per_run: int | None = None,
    ) -> None:
        self.max_usd: dict[str, float] = _scope_limits("max_usd", max_usd, integer=False)
        self.max_tokens: dict[str, int] = _scope_limits("max_tokens", max_tokens, integer=True)
        self.max_request_usd: float | None = _positive(
            "max_request_usd", max_request_usd, integer=False
        )
        self.max_input_tokens: int | None = _positive(
            "max_input_tokens", max_input_tokens, integer=True
        )
        self.max_output_tokens: int | None = _positive(
            "max_output_tokens", max_output_tokens, integer=True
        )
        self.max_tool_calls_per_step: int | None = _positive(
            "max_tool_calls_per_step", max_tool_calls_per_step, integer=True
        )
        self.max_tool_calls_per_run: int | None = _positive(
            "max_tool_calls_per_run", max_tool_calls_per_run, integer=True
        )
        steps = tuple(DEFAULT_LADDER if ladder is None else ladder)
        for step in steps:
            if step not in LADDER_STEPS:
                raise ValueError(f"unknown ladder step {step!r}; use some of {LADDER_STEPS}")
        if len(set(steps)) != len(steps):
            raise ValueError(f"ladder steps must not repeat, got {steps}")
        self.ladder: tuple[Step, ...] = steps  # type: ignore[assignment]
        if (self.max_usd or self.max_tokens) and store is None:
            raise ValueError(
                "Budget scope limits (max_usd / max_tokens) need a store: Budget(Store(), ...)"
            )
        self.store = store
        self.fail_closed = (
            env_flag("GRAPHTHRIFT_BUDGET_FAIL_CLOSED") if fail_closed is None else fail_closed
        )
        ttl = reservation_ttl
        if ttl is None:
            ttl = env_float("GRAPHTHRIFT_BUDGET_RESERVATION_TTL", 600.0)
        self.reservation_ttl = float(_positive("reservation_ttl", ttl, integer=False))
        out_default = default_output_tokens
        if out_default is None:
            out_default = int(env_float("GRAPHTHRIFT_BUDGET_OUTPUT_TOKENS", 1024))
        self.default_output_tokens = int(
            _positive("default_output_tokens", out_default, integer=True)
        )
        self.prices = prices or default_price_book()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._last_reclaim = 0.0
        self.max_pending = int(
            _positive(
                "max_pending",
                max_pending if max_pending is not None else 10_000,
                integer=True,
            )
        )
        self._pending: deque[tuple[Reservation, float, int]] = deque()
        self._pending_lock = threading.Lock()

    # -- estimates --------------------------------------------------------------------------

    @property
    def has_cost_limits(self) -> bool:
        return bool(self.max_usd) or self.max_request_usd is not None

    def check_model(self, model: str) -> None:
        """Refuse, with ``UnknownModelPrice``, a cost-limited budget on an unpriced model."""
        if self.has_cost_limits and not self.prices.is_known(model):
            raise UnknownModelPrice(model)

    def estimate(
        self,
        model: str,
        messages: Iterable[Any] | None = None,
        *,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
    ) -> Estimate:
        """The worst case of one call: ``messages`` counted (or ``input_tokens``) plus max output.

        Raises:
            UnknownModelPrice: the budget has cost limits and ``model`` has no price.
        """
        self.check_model(model)
        if input_tokens is None:
            input_tokens = int(count_messages(messages or (), model)) if messages else 0
        output = max_output_tokens or self.max_output_tokens or self.default_output_tokens
        if self.max_output_tokens is not None:
            output = min(output, self.max_output_tokens)
        usd = self.prices.cost(model, input_tokens, output) if self.prices.is_known(model) else None
        return Estimate(model, input_tokens, output, usd)

    def _scopes(
        self, tags: Mapping[str, Any], *, strict: bool = True
    ) -> list[tuple[ScopeRef, float | None, int | None]]:
        """The limited scopes ``tags`` fall in; ``strict=False`` skips an untagged scope
        (for reading) instead of raising ``BudgetScopeMissing``."""
        day = utc_day(self.clock())
        out = []
        for kind in SCOPE_KINDS:
            if kind not in self.max_usd and kind not in self.max_tokens:
                continue
            if not strict and tags.get(_TAG_OF_SCOPE[kind]) in (None, ""):
                continue
            key = _scope_key(kind, tags.get(_TAG_OF_SCOPE[kind]))
            ref = ScopeRef(kind, key, RUN_DAY if kind == "run" else day)
            out.append((ref, self.max_usd.get(kind), self.max_tokens.get(kind)))
        return out

    def _local_shortfall(self, est: Estimate) -> Shortfall | None:
        if self.max_input_tokens is not None and est.input_tokens > self.max_input_tokens:
            return Shortfall(
                "max_input_tokens", "step", self.max_input_tokens, 0.0, est.input_tokens
            )
        if (
            self.max_request_usd is not None
            and est.usd is not None
            and est.usd > self.max_request_usd
        ):
            return Shortfall("max_request_usd", "request", self.max_request_usd, 0.0, est.usd)
        return None

    def _shortfall_of(self, refusal: Refusal, est: Estimate) -> Shortfall:
        kind, usage = refusal.scope.kind, refusal.usage
        limit_usd = self.max_usd.get(kind)
        usd = est.usd or 0.0
        if limit_usd is not None and usage.spent_usd + usage.reserved_usd + usd > limit_usd:
            return Shortfall(
                "max_usd",
                refusal.scope.label(),
                limit_usd,
                usage.spent_usd + usage.reserved_usd,
                usd,
                kind,
            )
        limit_tokens = self.max_tokens.get(kind, 0)
        return Shortfall(
            "max_tokens",
            refusal.scope.label(),
            float(limit_tokens),
            float(usage.spent_tokens + usage.reserved_tokens),
            float(est.tokens),
            kind,
        )

    # -- reserve ----------------------------------------------------------------------------

    def _new(
        self, est: Estimate, scopes: Sequence[ScopeRef], *, backed: bool, forced: bool
    ) -> Reservation:
        return Reservation(
            uuid.uuid4().hex, est, tuple(scopes), est.usd or 0.0, est.tokens, backed, forced
        )

    def _store_failed(self, exc: StoreUnavailable) -> None:
        if self.fail_closed:
            raise exc
        diagnostics.count(
            "budget_store_failure",
            "graphthrift: budget store unreachable (%s); failing open",
            exc.reason,
        )

    def _should_reclaim(self) -> bool:
        return time.monotonic() - self._last_reclaim > min(self.reservation_ttl, 60.0)

    def try_reserve(
        self,
        model: str,
        messages: Iterable[Any] | None = None,
        *,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        tags: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Reservation | Shortfall:
        """Reserve one call's worst case on every scope, or return why it cannot be done.

        ``force=True`` reserves even past the limits (a human approved the call).
        """
        est = self.estimate(
            model, messages, input_tokens=input_tokens, max_output_tokens=max_output_tokens
        )
        return self._reserve_estimate(est, tags or {}, force)

    def _begin(
        self, est: Estimate, tags: Mapping[str, Any], force: bool
    ) -> tuple[Reservation | Shortfall, Any]:
        """The local part of a reservation, and the scopes it covers.

        A shortfall or an unbacked reservation (no scopes, or no store) is already the
        answer; a backed reservation still has to be made in the store.
        """
        short = None if force else self._local_shortfall(est)
        if short is not None:
            return short, []
        scopes = self._scopes(tags)
        refs = [s for s, _, _ in scopes]
        backed = bool(scopes) and self.store is not None
        return self._new(est, refs, backed=backed, forced=force), scopes

    def _program(self, r: Reservation, scopes: Any) -> Any:
        return reserve_program(
            r.id, scopes, r.usd, r.tokens,
            model=r.estimate.model, ttl_s=self.reservation_ttl, force=r.forced,
        )  # fmt: skip

    def _unbacked(self, r: Reservation, exc: StoreUnavailable) -> Reservation:
        """The store failed: fail open with an unbacked reservation (or raise, fail closed)."""
        self._store_failed(exc)
        return self._new(r.estimate, r.scopes, backed=False, forced=r.forced)

    def _outcome(self, r: Reservation, refusal: Refusal | None) -> Reservation | Shortfall:
        return self._shortfall_of(refusal, r.estimate) if isinstance(refusal, Refusal) else r

    def _reserve_estimate(
        self, est: Estimate, tags: Mapping[str, Any], force: bool
    ) -> Reservation | Shortfall:
        r, scopes = self._begin(est, tags, force)
        if not isinstance(r, Reservation) or not r.backed:
            return r

        def attempt() -> Refusal | None:
            assert self.store is not None
            result: Refusal | None = run_sync(
                self.store, self._program(r, scopes), rollback_if=Refusal
            )
            return result

        try:
            self.flush_pending()
            if self._should_reclaim():
                self.reclaim()
            refusal = attempt()
            if isinstance(refusal, Refusal) and self.reclaim():
                refusal = attempt()
        except StoreUnavailable as exc:
            return self._unbacked(r, exc)
        return self._outcome(r, refusal)

    async def atry_reserve(
        self,
        model: str,
        messages: Iterable[Any] | None = None,
        *,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        tags: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Reservation | Shortfall:
        """Async twin of ``try_reserve``."""
        est = self.estimate(
            model, messages, input_tokens=input_tokens, max_output_tokens=max_output_tokens
        )
        return await self._areserve_estimate(est, tags or {}, force)

    async def _areserve_estimate(
        self, est: Estimate, tags: Mapping[str, Any], force: bool
    ) -> Reservation | Shortfall:
        r, scopes = self._begin(est, tags, force)
        if not isinstance(r, Reservation) or not r.backed:
            return r

        async def attempt() -> Refusal | None:
            assert self.store is not None
            result: Refusal | None = await run_async(
                self.store, self._program(r, scopes), rollback_if=Refusal
            )
            return result

        try:
            await self.aflush_pending()
            if self._should_reclaim():
                await self.areclaim()
            refusal = await attempt()
            if isinstance(refusal, Refusal) and await self.areclaim():
                refusal = await attempt()
        except StoreUnavailable as exc:
            return self._unbacked(r, exc)
        return self._outcome(r, refusal)

    def reserve(
        self, model: str, messages: Iterable[Any] | None = None, **kwargs: Any
    ) -> Reservation:
        """``try_reserve`` that raises ``BudgetExceeded`` instead of returning a shortfall."""
        result = self.try_reserve(model, messages, **kwargs)
        if isinstance(result, Shortfall):
            raise result.error()
        return result

    async def areserve(
        self, model: str, messages: Iterable[Any] | None = None, **kwargs: Any
    ) -> Reservation:
        """Async twin of ``reserve``."""
        result = await self.atry_reserve(model, messages, **kwargs)
        if isinstance(result, Shortfall):
            raise result.error()
        return result

    # -- settle -----------------------------------------------------------------------------

    def _actual(
        self,
        r: Reservation,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_tokens: int,
        cost_usd: float | None,
        record: LedgerRecord | None,
        model: str | None = None,
        calls: Sequence[tuple[str | None, Any]] | None = None,
    ) -> tuple[float, int]:
        """The call's actual cost and tokens, priced at the model that was actually called."""
        cost_usd = _check_settle_cost(cost_usd)
        if calls is not None:
            return self._actual_calls(r, calls)
        model = model or r.estimate.model
        if record is not None:
            input_tokens, output_tokens = record.input_tokens, record.output_tokens
            cached_tokens, cost_usd = record.cached_tokens, _check_settle_cost(record.cost_usd)
            model = record.model or model
        if input_tokens is None:
            input_tokens = r.estimate.input_tokens
        if output_tokens is None:
            output_tokens = r.estimate.output_tokens
        for label, value in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("cached_tokens", cached_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                diagnostics.count("budget_bad_settle")
                raise ValueError(f"settle {label} must be an int >= 0, got {value!r}")
        self._check_overrun(r, output_tokens)
        if cost_usd is None:
            cost_usd = self._price(model, r, input_tokens, output_tokens, cached_tokens)
        return cost_usd, input_tokens + output_tokens

    @staticmethod
    def _check_overrun(r: Reservation, output_tokens: int) -> None:
        """Count a call that wrote more than it reserved (a model that ignores its cap).

        Its real cost is settled all the same, so the next reservation sees it and is
        refused; the bound on overspend then depends on the calls in flight (README).
        """
        if output_tokens > r.estimate.output_tokens:
            diagnostics.count(
                "budget_output_overrun",
                "graphthrift: a call wrote %d output tokens, %d were reserved (%s)",
                output_tokens,
                r.estimate.output_tokens,
                r.estimate.model,
            )

    def _price(
        self,
        model: str,
        r: Reservation,
        inp: int,
        out: int,
        cached: int,
        writes: int = 0,
        writes_1h: int = 0,
    ) -> float:
        """``model``'s price of the usage (prompt-cache writes at their own rates, as the
        ledger prices them); an unpriced model falls back to the reserved one's."""

        def price(name: str) -> float | None:
            return self.prices.cost(
                name, inp, out, cached, cache_write_tokens=writes, cache_write_1h_tokens=writes_1h
            )

        cost = price(model) if self.prices.is_known(model) else None
        if cost is None and model != r.estimate.model:
            diagnostics.count(
                "budget_unpriced_settle",
                "graphthrift: no price for %r; settling at %r's price",
                model,
                r.estimate.model,
            )
            cost = price(r.estimate.model)
        return float(cost or 0.0)

    def _actual_calls(
        self, r: Reservation, calls: Sequence[tuple[str | None, Any]]
    ) -> tuple[float, int]:
        """Sum the calls one reservation covered (a cascade: the cheap call and the strong one)."""
        from graphthrift.ledger.usage import read_usage

        usd, tokens = 0.0, 0
        for name, raw in calls:
            usage = read_usage(raw)
            writes = writes_1h = 0
            if usage is None:  # no usage reported: the reserved worst case
                inp, out, cached = r.estimate.input_tokens, r.estimate.output_tokens, 0
            else:
                inp, out, cached = usage.input_tokens, usage.output_tokens, usage.cached_tokens
                writes, writes_1h = usage.cache_write_tokens, usage.cache_write_1h_tokens
                self._check_overrun(r, out)
            usd += self._price(name or r.estimate.model, r, inp, out, cached, writes, writes_1h)
            tokens += inp + out
        return usd, tokens

    def settle(
        self,
        reservation: Reservation,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int = 0,
        cost_usd: float | None = None,
        record: LedgerRecord | None = None,
        model: str | None = None,
        calls: Sequence[tuple[str | None, Any]] | None = None,
    ) -> None:
        """Book the call's actual usage and release the rest of its reservation.

        Pass a ``LedgerRecord`` (the ledger's view of the call), token counts, or ``calls``
        (``(model, usage)`` pairs: every model call the reservation covered, e.g. the cheap
        and the strong call of an escalation). ``model`` is the model actually called
        (default: the reserved one); the usage is priced at it. Missing counts fall back to
        the estimate. Settling twice is a no-op.

        Raises:
            ValueError: a negative, NaN or infinite ``cost_usd`` or a negative token count
                (counted as ``budget_bad_settle``; nothing is booked, the reservation stays
                open until it is settled properly or expires).
        """
        if reservation.settled:
            return
        usd, tokens = self._actual(
            reservation, input_tokens, output_tokens, cached_tokens, cost_usd, record, model, calls
        )
        self._apply(reservation, usd, tokens)

    async def asettle(
        self,
        reservation: Reservation,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int = 0,
        cost_usd: float | None = None,
        record: LedgerRecord | None = None,
        model: str | None = None,
        calls: Sequence[tuple[str | None, Any]] | None = None,
    ) -> None:
        """Async twin of ``settle``."""
        if reservation.settled:
            return
        usd, tokens = self._actual(
            reservation, input_tokens, output_tokens, cached_tokens, cost_usd, record, model, calls
        )
        await self._aapply(reservation, usd, tokens)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unused (the call did not run)."""
        if not reservation.settled:
            self._apply(reservation, 0.0, 0)

    async def arelease(self, reservation: Reservation) -> None:
        """Async twin of ``release``."""
        if not reservation.settled:
            await self._aapply(reservation, 0.0, 0)

    # -- settlement, and spend that waits for the store ----------------------------------------

    def _settle_program(self, r: Reservation, usd: float, tokens: int) -> Any:
        return settle_program(r.id, r.scopes, r.usd, r.tokens, usd, tokens)

    def _defer(self, r: Reservation, usd: float, tokens: int) -> None:
        """Keep a settlement the store could not take, to charge it when the store answers.

        Spend that happened while the budget failed open is real spend (issue 12, item 8);
        the queue is bounded (``max_pending``), and what falls off it is counted.
        """
        if not r.scopes or (usd == 0.0 and tokens == 0 and not r.backed):
            return
        with self._pending_lock:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                diagnostics.count(
                    "budget_pending_dropped",
                    "graphthrift: budget pending queue full (%d); oldest charge dropped",
                    self.max_pending,
                )
            self._pending.append((r, usd, tokens))

    @property
    def pending_charges(self) -> int:
        """Settlements waiting for the store (made while it was unreachable)."""
        with self._pending_lock:
            return len(self._pending)

    def _next_pending(self) -> tuple[Reservation, float, int] | None:
        with self._pending_lock:
            return self._pending.popleft() if self._pending else None

    def _requeue(self, item: tuple[Reservation, float, int]) -> None:
        with self._pending_lock:
            self._pending.appendleft(item)

    def flush_pending(self) -> int:
        """Charge the settlements kept while the store was down; return how many were charged.

        Called before every backed reservation and settlement, so spend made during an
        outage is charged as soon as the store answers again.
        """
        if self.store is None:
            return 0
        done = 0
        while (item := self._next_pending()) is not None:
            try:
                run_sync(self.store, self._settle_program(*item))
            except StoreUnavailable:
                self._requeue(item)
                break
            done += 1
        return done

    async def aflush_pending(self) -> int:
        """Async twin of ``flush_pending``."""
        if self.store is None:
            return 0
        done = 0
        while (item := self._next_pending()) is not None:
            try:
                await run_async(self.store, self._settle_program(*item))
            except StoreUnavailable:
                self._requeue(item)
                break
            done += 1
        return done

    def _settle_failed(
        self, r: Reservation, usd: float, tokens: int, exc: StoreUnavailable
    ) -> None:
        diagnostics.count(
            "budget_store_failure",
            "graphthrift: could not settle budget reservation %s (%s); kept to charge later",
            r.id,
            exc.reason,
        )
        self._defer(r, usd, tokens)

    def _apply(self, r: Reservation, usd: float, tokens: int) -> None:
        r.settled, r.actual_usd, r.actual_tokens = True, usd, tokens
        if self.store is None:
            return
        if not r.backed:
            self._defer(r, usd, tokens)
            return
        try:
            self.flush_pending()
            run_sync(self.store, self._settle_program(r, usd, tokens))
        except StoreUnavailable as exc:
            self._settle_failed(r, usd, tokens, exc)

    async def _aapply(self, r: Reservation, usd: float, tokens: int) -> None:
        r.settled, r.actual_usd, r.actual_tokens = True, usd, tokens
        if self.store is None:
            return
        if not r.backed:
            self._defer(r, usd, tokens)
            return
        try:
            await self.aflush_pending()
            await run_async(self.store, self._settle_program(r, usd, tokens))
        except StoreUnavailable as exc:
            self._settle_failed(r, usd, tokens, exc)

    # -- maintenance and reading ------------------------------------------------------------

    def reclaim(self) -> int:
        """Release expired reservations (left by crashed processes); return how many."""
        if self.store is None:
            return 0
        self._last_reclaim = time.monotonic()
        found: int = run_sync(self.store, reclaim_program())
        return found

    async def areclaim(self) -> int:
        """Async twin of ``reclaim``."""
        if self.store is None:
            return 0
        self._last_reclaim = time.monotonic()
        found: int = await run_async(self.store, reclaim_program())
        return found

    def usage(
        self, tags: Mapping[str, Any] | None = None, *, day: date | None = None
    ) -> dict[str, dict[str, Any]]:
        """Spent, reserved and limit of every limited scope the ``tags`` fall in.

        ``day`` defaults to today (UTC). Returns ``{scope_kind: {...}}``; scopes whose tag
        is not given are left out.
        """
        scopes = self._scopes(tags or {}, strict=False)
        if day is not None:
            scopes = [
                (ScopeRef(s.kind, s.key, s.day if s.kind == "run" else day), u, t)
                for s, u, t in scopes
            ]
        if self.store is None or not scopes:
            return {}
        found: dict[ScopeRef, ScopeUsage] = run_sync(
            self.store, read_program([s for s, _, _ in scopes])
        )
        return {
            ref.kind: {
                "scope": ref.label(),
                "spent_usd": use.spent_usd,
                "spent_tokens": use.spent_tokens,
                "reserved_usd": use.reserved_usd,
                "reserved_tokens": use.reserved_tokens,
                "calls": use.calls,
                "limit_usd": lim_usd,
                "limit_tokens": lim_tokens,
            }
            for (ref, lim_usd, lim_tokens) in scopes
            for use in (found[ref],)
        }

    # -- degradation ------------------------------------------------------------------------

    def next_step(
        self,
        shortfall: Shortfall,
        *,
        tried: Iterable[str] = (),
        available: Iterable[str] = ("end",),
        estimate: Estimate | None = None,
        cheaper: Estimate | None = None,
    ) -> Step | None:
        """The next ladder rung that could make this call fit, or None for a hard stop.

        Args:
            shortfall: why the reservation was refused.
            tried: rungs already carried out for this call.
            available: rungs the adapter can carry out (it has a compressor, a cheaper
                model, a summarizer, a checkpointer for interrupts).
            estimate: the refused call's estimate; lets compress/summarize be skipped when
                even an empty prompt would not fit.
            cheaper: the cheaper model's estimate of the same call.
        """
        done, can = set(tried), set(available)
        for step in self.ladder:
            if step in done or step not in can:
                continue
            if step in _INPUT_SHRINKERS and not self._input_helps(shortfall, estimate):
                continue
            if step == "cheaper_model" and not self._cheaper_helps(shortfall, estimate, cheaper):
                continue
            return step
        return None

    def _input_helps(self, short: Shortfall, est: Estimate | None) -> bool:
        if short.limit_name == "max_input_tokens":
            return True
        if est is None:
            return True
        if short.limit_name in ("max_tokens",):
            return est.output_tokens <= short.remaining and est.input_tokens > 0
        if short.limit_name in ("max_usd", "max_request_usd"):
            floor = self.prices.cost(est.model, 0, est.output_tokens) or 0.0
            return floor <= short.remaining and est.input_tokens > 0
        return False

    def _cheaper_helps(
        self, short: Shortfall, est: Estimate | None, cheaper: Estimate | None
    ) -> bool:
        if short.limit_name not in ("max_usd", "max_request_usd") or cheaper is None:
            return False
        if cheaper.usd is None:
            return False
        if est is not None and est.usd is not None and cheaper.usd >= est.usd:
            return False
        return cheaper.usd <= short.remaining

    def _ladder(
        self,
        model: str,
        messages: list[Any],
        tags: Mapping[str, Any],
        cheaper_model: str | None,
        can: set[str],
        max_output_tokens: int | None,
    ) -> Generator[tuple[str, Any], Any, Preflight]:
        """The degradation loop, written once: yields actions, receives their results."""
        taken: list[str] = []
        force = False
        while True:
            est = self.estimate(model, messages, max_output_tokens=max_output_tokens)
            result = yield "reserve", (est, force)
            if isinstance(result, Reservation):
                return Preflight("proceed", model, messages, taken, result, None)
            cheaper = None
            if cheaper_model is not None and cheaper_model != model and "cheaper_model" in can:
                cheaper = self.estimate(
                    cheaper_model,
                    messages,
                    input_tokens=est.input_tokens,
                    max_output_tokens=max_output_tokens,
                )
            step = self.next_step(result, tried=taken, available=can, estimate=est, cheaper=cheaper)
            if step is None:
                raise result.error()
            taken.append(step)
            if step == "end":
                return Preflight("end", model, messages, taken, None, result)
            if step == "cheaper_model":
                assert cheaper_model is not None
                model = cheaper_model
            elif step == "interrupt":
                force = bool((yield "interrupt", result))
            else:
                messages = list((yield step, messages))

    def preflight(
        self,
        model: str,
        messages: Sequence[Any],
        *,
        tags: Mapping[str, Any] | None = None,
        cheaper_model: str | None = None,
        compress: Callable[[list[Any]], Sequence[Any]] | None = None,
        summarize: Callable[[list[Any]], Sequence[Any]] | None = None,
        interrupt: Callable[[Shortfall], Any] | None = None,
        max_output_tokens: int | None = None,
    ) -> Preflight:
        """Reserve for one call, walking the ladder when refused; what adapters call.

        Args:
            model, messages: the call (messages of any framework; counted by the core).
            tags: tenant_id, feature, thread_id, run_id.
            cheaper_model: the model the ``cheaper_model`` rung switches to.
            compress, summarize: ``messages -> messages`` callables for those rungs (e.g. an
                ``ExtractiveCompressor`` or ``HistoryPruner`` wrapped by the adapter).
            interrupt: asks a human; returns truthy to approve the call past the limit.
            max_output_tokens: the call's own output cap, if it has one.

        Returns:
            A ``Preflight``: ``outcome="proceed"`` with the reservation and the (possibly
            compressed) messages and model, or ``outcome="end"`` with the shortfall.

        Raises:
            BudgetExceeded: the ladder is used up (the hard stop).
        """
        can = self._available(cheaper_model, compress, summarize, interrupt)
        program = self._ladder(
            model, list(messages), tags or {}, cheaper_model, can, max_output_tokens
        )
        try:
            action, payload = next(program)
            while True:
                if action == "reserve":
                    reply: Any = self._reserve_estimate(payload[0], tags or {}, payload[1])
                elif action == "compress":
                    assert compress is not None
                    reply = compress(payload)
                elif action == "summarize":
                    assert summarize is not None
                    reply = summarize(payload)
                else:
                    assert interrupt is not None
                    reply = interrupt(payload)
                action, payload = program.send(reply)
        except StopIteration as stop:
            done: Preflight = stop.value
            return done

    async def apreflight(
        self,
        model: str,
        messages: Sequence[Any],
        *,
        tags: Mapping[str, Any] | None = None,
        cheaper_model: str | None = None,
        compress: Callable[[list[Any]], Any] | None = None,
        summarize: Callable[[list[Any]], Any] | None = None,
        interrupt: Callable[[Shortfall], Any] | None = None,
        max_output_tokens: int | None = None,
    ) -> Preflight:
        """Async twin of ``preflight``; the callables may be sync or async."""
        can = self._available(cheaper_model, compress, summarize, interrupt)
        program = self._ladder(
            model, list(messages), tags or {}, cheaper_model, can, max_output_tokens
        )
        try:
            action, payload = next(program)
            while True:
                if action == "reserve":
                    reply: Any = await self._areserve_estimate(payload[0], tags or {}, payload[1])
                else:
                    fn = {"compress": compress, "summarize": summarize}.get(action, interrupt)
                    assert fn is not None
                    reply = fn(payload)
                    if inspect.isawaitable(reply):
                        reply = await reply
                action, payload = program.send(reply)
        except StopIteration as stop:
            done: Preflight = stop.value
            return done

    def _available(self, cheaper: Any, compress: Any, summarize: Any, interrupt: Any) -> set[str]:
        can = {"end"}
        for step, tool in (
            ("cheaper_model", cheaper),
            ("compress", compress),
            ("summarize", summarize),
            ("interrupt", interrupt),
        ):
            if tool is not None:
                can.add(step)
        return can

    def allowed_tool_calls(self, requested: int, *, used_in_run: int = 0) -> int:
        """How many of ``requested`` tool calls in one step the budget lets run.

        ``used_in_run`` is how many tool calls the run already made; with
        ``max_tool_calls_per_run`` the step gets at most what the run has left.
        """
        allowed = requested
        if self.max_tool_calls_per_step is not None:
            allowed = min(allowed, self.max_tool_calls_per_step)
        if self.max_tool_calls_per_run is not None:
            allowed = min(allowed, max(self.max_tool_calls_per_run - used_in_run, 0))
        return allowed

    def __repr__(self) -> str:
        parts = [
            f"{k}={v!r}"
            for k, v in (
                ("max_usd", self.max_usd),
                ("max_tokens", self.max_tokens),
                ("max_request_usd", self.max_request_usd),
                ("max_input_tokens", self.max_input_tokens),
                ("max_output_tokens", self.max_output_tokens),
                ("max_tool_calls_per_step", self.max_tool_calls_per_step),
                ("max_tool_calls_per_run", self.max_tool_calls_per_run),
            )
            if v
        ]
        return f"Budget({', '.join(parts)})"
