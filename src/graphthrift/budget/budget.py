"""Pre-flight budgets: reserve a call's worst-case cost before it runs, settle it after.

Long because: one class, ``Budget``, whose store operations each have a sync and an async
twin; its parts live beside it (``limits``, ``reservation``, ``ladder``, ``settlement``).

A ``Budget`` combines limits of three kinds:

- per step (checked in process): ``max_tool_calls_per_step``, ``max_input_tokens`` and
  ``max_output_tokens`` (which is also the output reserved for each call);
- per request: ``max_request_usd``, the estimated cost of one call;
- per scope: ``max_usd`` and ``max_tokens``, dicts keyed by ``"tenant"``, ``"feature"``,
  ``"thread"`` or ``"run"``. Tenant, feature and thread counters are per **UTC day** (the
  day starts at 00:00 UTC whatever the server's or the user's time zone); run counters last
  for the run. A thread's counter is within its tenant when the run names one (thread ids
  recur across tenants); a feature's spans every tenant.

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

import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, cast

from graphthrift import diagnostics
from graphthrift.budget.ladder import (
    Preflight,
    Shortfall,
    adrive,
    available_steps,
    drive,
    next_step,
    program,
)
from graphthrift.budget.limits import (
    DEFAULT_LADDER,
    LADDER_STEPS,
    SCOPE_KINDS,
    TAG_OF_SCOPE,
    BudgetTags,
    Step,
    check_keywords,
    check_ladder,
    check_tags,
    positive,
    scope_key,
    scope_limits,
    tags_from_metadata,
    thread_key,
    utc_day,
)
from graphthrift.budget.refusals import record_refusal
from graphthrift.budget.reservation import Estimate, Reservation
from graphthrift.budget.settlement import PendingCharges, actual_cost
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
    BudgetScopeMissing,
    ConfigError,
    StoreUnavailable,
    UnknownModelPrice,
)
from graphthrift.ledger.prices import PriceBook, default_price_book
from graphthrift.ledger.records import LedgerRecord

if TYPE_CHECKING:
    from graphthrift.ledger.ledger import Ledger
from graphthrift.store.postgres import Store
from graphthrift.text.tokens import count_messages

__all__ = [
    "DEFAULT_LADDER",
    "LADDER_STEPS",
    "SCOPE_KINDS",
    "Budget",
    "BudgetExceeded",
    "BudgetScopeMissing",
    "BudgetTags",
    "Estimate",
    "Preflight",
    "Reservation",
    "ReserveOptions",
    "ScopeUsage",
    "Shortfall",
    "Step",
    "tags_from_metadata",
    "utc_day",
]


class ReserveOptions(TypedDict, total=False):
    """The keyword arguments ``reserve``/``areserve`` pass on to ``try_reserve``."""

    input_tokens: int | None
    max_output_tokens: int | None
    tags: Mapping[str, Any] | None
    force: bool


def _reserve_options(where: str, options: Mapping[str, Any]) -> ReserveOptions:
    """``options`` checked: an unknown keyword raises ``ConfigError`` naming it."""
    known = ReserveOptions.__annotations__
    return cast(ReserveOptions, check_keywords(f"Budget.{where}", options, known, "argument"))


#: Open reservations kept in process past which those older than the TTL are forgotten.
_OPEN_SWEEP_AT = 10_000


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
        ledger: a ``Ledger`` that gets one ``kind="refusal"`` row (the run's tags and the
            limit's name) per refusal, which ``graphthrift alerts`` watches; fails open.

    Raises:
        ConfigError: a limit that is zero, negative or not finite, an unknown scope or
            ladder step, or scope limits without a store (a ``ValueError``); a limit of a
            wrong type raises ``ConfigTypeError`` (also a ``TypeError``).
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
        ledger: Ledger | None = None,
    ) -> None:
        self.max_usd: dict[str, float] = scope_limits("max_usd", max_usd, integer=False)
        self.max_tokens: dict[str, int] = scope_limits("max_tokens", max_tokens, integer=True)
        self.max_request_usd: float | None = positive(
            "max_request_usd", max_request_usd, integer=False
        )
        self.max_input_tokens: int | None = positive(
            "max_input_tokens", max_input_tokens, integer=True
        )
        self.max_output_tokens: int | None = positive(
            "max_output_tokens", max_output_tokens, integer=True
        )
        self.max_tool_calls_per_step: int | None = positive(
            "max_tool_calls_per_step", max_tool_calls_per_step, integer=True
        )
        self.max_tool_calls_per_run: int | None = positive(
            "max_tool_calls_per_run", max_tool_calls_per_run, integer=True
        )
        self.ladder: tuple[Step, ...] = check_ladder(ladder)
        if (self.max_usd or self.max_tokens) and store is None:
            raise ConfigError(
                "Budget store",
                None,
                "scope limits (max_usd / max_tokens) need a store: Budget(Store(), ...)",
            )
        self.store = store
        self.ledger = ledger
        self.fail_closed = (
            env_flag("GRAPHTHRIFT_BUDGET_FAIL_CLOSED") if fail_closed is None else fail_closed
        )
        ttl = reservation_ttl
        if ttl is None:
            ttl = env_float("GRAPHTHRIFT_BUDGET_RESERVATION_TTL", 600.0)
        self.reservation_ttl = float(positive("reservation_ttl", ttl, integer=False))
        out_default = default_output_tokens
        if out_default is None:
            out_default = int(env_float("GRAPHTHRIFT_BUDGET_OUTPUT_TOKENS", 1024))
        self.default_output_tokens = int(
            positive("default_output_tokens", out_default, integer=True)
        )
        self.prices = prices or default_price_book()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._last_reclaim = 0.0
        self.max_pending = int(
            positive(
                "max_pending",
                max_pending if max_pending is not None else 10_000,
                integer=True,
            )
        )
        self._pending = PendingCharges(self.max_pending)
        self._open: dict[str, Reservation] = {}  # backed, not yet settled (a drain releases)
        self._open_lock = threading.Lock()
        self._open_swept = 0.0

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
            if not strict and tags.get(TAG_OF_SCOPE[kind]) in (None, ""):
                continue
            key = scope_key(kind, tags.get(TAG_OF_SCOPE[kind]))
            if kind == "thread":
                key = thread_key(key, tags.get("tenant_id"))
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
        if isinstance(refusal, Refusal):
            return self._shortfall_of(refusal, r.estimate)
        with self._open_lock:
            self._open[r.id] = r
            now = time.monotonic()
            if len(self._open) > _OPEN_SWEEP_AT and now >= self._open_swept + min(
                self.reservation_ttl, 60.0
            ):  # never settled: the store reclaims them; swept at most once a minute
                self._open_swept = now
                old = now - self.reservation_ttl
                for key in [k for k, v in self._open.items() if v.created < old]:
                    del self._open[key]
        return r

    def open_reservations(self) -> list[Reservation]:
        """This process's reservations held in the store and not yet settled or released:
        the calls still running. ``GracefulShutdown(budget=...)`` releases them when its
        grace period ends, so a call stopped with the process strands nothing."""
        with self._open_lock:
            return [r for r in self._open.values() if not r.settled]

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
        self,
        model: str,
        messages: Iterable[Any] | None = None,
        **options: Unpack[ReserveOptions],
    ) -> Reservation:
        """``try_reserve`` that raises ``BudgetExceeded`` instead of returning a shortfall.

        Raises:
            ConfigError: an unknown keyword argument (also a ``TypeError``).
        """
        opts = _reserve_options("reserve", options)
        result = self.try_reserve(model, messages, **opts)
        if isinstance(result, Shortfall):
            self.record_refusal(result.limit_name, opts.get("tags"), model)
            raise result.error()
        return result

    async def areserve(
        self,
        model: str,
        messages: Iterable[Any] | None = None,
        **options: Unpack[ReserveOptions],
    ) -> Reservation:
        """Async twin of ``reserve``."""
        opts = _reserve_options("areserve", options)
        result = await self.atry_reserve(model, messages, **opts)
        if isinstance(result, Shortfall):
            self.record_refusal(result.limit_name, opts.get("tags"), model)
            raise result.error()
        return result

    # -- settle -----------------------------------------------------------------------------

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
        if reservation.settled and not reservation.drained:
            return
        usd, tokens = actual_cost(
            self.prices,
            reservation,
            input_tokens,
            output_tokens,
            cached_tokens,
            cost_usd,
            record,
            model,
            calls,
        )
        reservation.drained = False  # booked once: a second settle is a no-op again
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
        if reservation.settled and not reservation.drained:
            return
        usd, tokens = actual_cost(
            self.prices,
            reservation,
            input_tokens,
            output_tokens,
            cached_tokens,
            cost_usd,
            record,
            model,
            calls,
        )
        reservation.drained = False
        await self._aapply(reservation, usd, tokens)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unused (the call did not run)."""
        if not reservation.settled:
            self._apply(reservation, 0.0, 0)

    async def arelease(self, reservation: Reservation) -> None:
        """Async twin of ``release``."""
        if not reservation.settled:
            await self._aapply(reservation, 0.0, 0)

    def release_for_drain(self, reservation: Reservation) -> bool:
        """Release a reservation whose call a shutdown stopped waiting for; return whether it
        was open. The call may still finish: its ``settle`` then books what it spent (the
        reservation's row is gone, so only the spend is added), where after ``release`` it
        would book nothing."""
        if reservation.settled:
            return False
        self._apply(reservation, 0.0, 0)
        reservation.drained = True
        return True

    # -- settlement, and spend that waits for the store ----------------------------------------

    def _settle_program(self, r: Reservation, usd: float, tokens: int) -> Any:
        return settle_program(r.id, r.scopes, r.usd, r.tokens, usd, tokens, unreserved=not r.backed)

    @property
    def pending_charges(self) -> int:
        """Settlements waiting for the store (made while it was unreachable)."""
        return len(self._pending)

    def flush_pending(self) -> int:
        """Charge the settlements kept while the store was down; return how many were charged.

        Called before every backed reservation and settlement, so spend made during an
        outage is charged as soon as the store answers again.
        """
        if self.store is None:
            return 0
        done = 0
        while (item := self._pending.pop()) is not None:
            try:
                run_sync(self.store, self._settle_program(*item))
            except StoreUnavailable:
                self._pending.requeue(item)
                break
            done += 1
        return done

    async def aflush_pending(self) -> int:
        """Async twin of ``flush_pending``."""
        if self.store is None:
            return 0
        done = 0
        while (item := self._pending.pop()) is not None:
            try:
                await run_async(self.store, self._settle_program(*item))
            except StoreUnavailable:
                self._pending.requeue(item)
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
        self._pending.defer(r, usd, tokens)

    def _apply(self, r: Reservation, usd: float, tokens: int) -> None:
        with self._open_lock:
            self._open.pop(r.id, None)
        r.settled, r.actual_usd, r.actual_tokens = True, usd, tokens
        if self.store is None:
            return
        if not r.backed:
            self._pending.defer(r, usd, tokens)
            return
        try:
            self.flush_pending()
            run_sync(self.store, self._settle_program(r, usd, tokens))
        except StoreUnavailable as exc:
            self._settle_failed(r, usd, tokens, exc)

    async def _aapply(self, r: Reservation, usd: float, tokens: int) -> None:
        with self._open_lock:
            self._open.pop(r.id, None)
        r.settled, r.actual_usd, r.actual_tokens = True, usd, tokens
        if self.store is None:
            return
        if not r.backed:
            self._pending.defer(r, usd, tokens)
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
        self,
        tags: Mapping[str, Any] | None = None,
        *,
        day: date | None = None,
        **scope: Unpack[BudgetTags],
    ) -> dict[str, dict[str, Any]]:
        """Spent, reserved and limit of every limited scope the ``tags`` fall in.

        The tags may also be given as keywords: ``budget.usage(tenant_id="acme")``.
        ``day`` defaults to today (UTC). Returns ``{scope_kind: {...}}``; scopes whose tag
        is not given are left out.

        Raises:
            ConfigError: an unknown tag keyword (a misspelt ``tenant_id`` would otherwise
                read no scope at all).
        """
        merged = {**(tags or {}), **check_tags("Budget.usage", scope)}
        scopes = self._scopes(merged, strict=False)
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
        return next_step(
            self.ladder,
            self.prices,
            shortfall,
            tried=tried,
            available=available,
            estimate=estimate,
            cheaper=cheaper,
        )

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
        can = available_steps(cheaper_model, compress, summarize, interrupt)
        steps = program(self, model, list(messages), cheaper_model, can, max_output_tokens)
        rungs = {"compress": compress, "summarize": summarize, "interrupt": interrupt}
        try:
            done = drive(
                steps, lambda est, force: self._reserve_estimate(est, tags or {}, force), rungs
            )
        except BudgetExceeded as exc:
            self.record_refusal(exc.limit_name, tags, model)
            raise
        return self._stopped(done, tags)

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
        can = available_steps(cheaper_model, compress, summarize, interrupt)
        steps = program(self, model, list(messages), cheaper_model, can, max_output_tokens)
        rungs = {"compress": compress, "summarize": summarize, "interrupt": interrupt}

        def reserve(est: Estimate, force: bool) -> Awaitable[Reservation | Shortfall]:
            return self._areserve_estimate(est, tags or {}, force)

        try:
            done = await adrive(steps, reserve, rungs)
        except BudgetExceeded as exc:
            self.record_refusal(exc.limit_name, tags, model)
            raise
        return self._stopped(done, tags)

    def _stopped(self, done: Preflight, tags: Mapping[str, Any] | None) -> Preflight:
        """A ladder that ended the run is one refusal: write its row."""
        if done.outcome == "end" and done.shortfall is not None:
            self.record_refusal(done.shortfall.limit_name, tags, done.model)
        return done

    def record_refusal(
        self, limit_name: str, tags: Mapping[str, Any] | None = None, model: str | None = None
    ) -> None:
        """Write one ``kind="refusal"`` ledger row (when this budget has a ``ledger``)."""
        record_refusal(self.ledger, limit_name, tags, model)

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
