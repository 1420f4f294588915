"""The SQL behind ``Budget``: atomic reservations, settlement and reclaiming, sync and async.

Each operation is written once, as a program (a generator that yields ``Sql`` statements and
receives the rows back); ``run_sync`` and ``run_async`` drive it with the store's one sans-IO
driver (``graphthrift.store.driver``) on a sync or an async connection inside one
transaction. Scope rows are always touched in sorted order, so two
transactions never wait on each other in opposite orders (no deadlocks).

A reservation is one conditional upsert per scope::

    INSERT ... ON CONFLICT DO UPDATE SET reserved = reserved + r
    WHERE spent + reserved + r <= limit RETURNING ...

If any scope refuses, the transaction rolls back, so a reservation is all-or-nothing and
concurrent reservations can never together pass a limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import TextClause, text

from graphthrift.budget.schema import RESERVATIONS_TABLE, SPEND_TABLE
from graphthrift.store import driver
from graphthrift.store.driver import Plan, Sql
from graphthrift.store.postgres import Store

RUN_DAY = date(1970, 1, 1)  # run scopes are counted per run, not per day


@dataclass(frozen=True, slots=True, order=True)
class ScopeRef:
    """One counter: a scope kind (run, thread, tenant, feature), its key and its UTC day."""

    kind: str
    key: str
    day: date

    def label(self) -> str:
        """``tenant:acme@2026-05-01`` (runs have no day)."""
        if self.day == RUN_DAY:
            return f"{self.kind}:{self.key}"
        return f"{self.kind}:{self.key}@{self.day.isoformat()}"


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """What one counter holds right now."""

    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    calls: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A scope that refused a reservation, with what it held at that moment."""

    scope: ScopeRef
    usage: ScopeUsage


_INF = float("inf")

_RESERVE = text(f"""
    INSERT INTO {SPEND_TABLE} AS s
        (scope_kind, scope_key, day, reserved_usd, reserved_tokens, calls, updated_at)
    VALUES (:kind, :key, :day, :usd, :tokens, 1, now())
    ON CONFLICT (scope_kind, scope_key, day) DO UPDATE SET
        reserved_usd = s.reserved_usd + EXCLUDED.reserved_usd,
        reserved_tokens = s.reserved_tokens + EXCLUDED.reserved_tokens,
        calls = s.calls + 1,
        updated_at = now()
    WHERE s.spent_usd + s.reserved_usd + EXCLUDED.reserved_usd <= CAST(:limit_usd AS float8)
      AND s.spent_tokens + s.reserved_tokens + EXCLUDED.reserved_tokens
          <= CAST(:limit_tokens AS float8)
    RETURNING s.spent_usd
""")
_READ_ONE = text(f"""
    SELECT spent_usd, spent_tokens, reserved_usd, reserved_tokens, calls FROM {SPEND_TABLE}
    WHERE scope_kind = :kind AND scope_key = :key AND day = :day
""")
_INSERT_RESERVATION = text(f"""
    INSERT INTO {RESERVATIONS_TABLE} (id, expires_at, scopes, usd, tokens, model)
    VALUES (:id, now() + make_interval(secs => :ttl), CAST(:scopes AS jsonb), :usd, :tokens,
            :model)
""")
_DELETE_RESERVATION = text(f"DELETE FROM {RESERVATIONS_TABLE} WHERE id = :id RETURNING id")
_SETTLE = text(f"""
    INSERT INTO {SPEND_TABLE} AS s
        (scope_kind, scope_key, day, spent_usd, spent_tokens, calls, updated_at)
    VALUES (:kind, :key, :day, :spent_usd, :spent_tokens, :calls, now())
    ON CONFLICT (scope_kind, scope_key, day) DO UPDATE SET
        -- a call made while the store was down was never reserved, so never counted
        calls = s.calls + EXCLUDED.calls,
        -- float residue of adding and taking back the same amounts is not a reservation:
        -- below a millionth of a cent, none is held
        reserved_usd = CASE WHEN s.reserved_usd - :reserved_usd < 1e-8 THEN 0
                            ELSE s.reserved_usd - :reserved_usd END,
        reserved_tokens = GREATEST(s.reserved_tokens - :reserved_tokens, 0),
        spent_usd = s.spent_usd + EXCLUDED.spent_usd,
        spent_tokens = s.spent_tokens + EXCLUDED.spent_tokens,
        updated_at = now()
""")
_RECLAIM = text(f"""
    DELETE FROM {RESERVATIONS_TABLE} WHERE id IN (
        SELECT id FROM {RESERVATIONS_TABLE} WHERE expires_at < now()
        ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED)
    RETURNING scopes, usd, tokens
""")

Program = Plan[Any]


def _op(statement: TextClause, params: dict[str, Any]) -> Sql:
    """A statement whose rows (if it returns any) come back as tuples."""
    return Sql(statement, params, fetch=_returns_rows(statement), rows="tuples")


def _returns_rows(statement: TextClause) -> bool:
    return "RETURNING" in statement.text or statement.text.lstrip().upper().startswith("SELECT")


def _scope_params(scope: ScopeRef) -> dict[str, Any]:
    return {"kind": scope.kind, "key": scope.key, "day": scope.day}


def reserve_program(
    reservation_id: str,
    scopes: Sequence[tuple[ScopeRef, float | None, int | None]],
    usd: float,
    tokens: int,
    *,
    model: str | None,
    ttl_s: float,
    force: bool = False,
) -> Program:
    """Reserve ``usd``/``tokens`` on every scope (sorted) or none; return a Refusal or None."""
    for scope, limit_usd, limit_tokens in sorted(scopes, key=lambda s: s[0]):
        params = {
            **_scope_params(scope),
            "usd": usd,
            "tokens": tokens,
            "limit_usd": _INF if force or limit_usd is None else limit_usd,
            "limit_tokens": _INF if force or limit_tokens is None else float(limit_tokens),
        }
        fresh_over = not force and (
            (limit_usd is not None and usd > limit_usd)
            or (limit_tokens is not None and tokens > limit_tokens)
        )
        rows = [] if fresh_over else (yield _op(_RESERVE, params))
        if not rows:
            found = yield _op(_READ_ONE, _scope_params(scope))
            usage = ScopeUsage(*found[0]) if found else ScopeUsage()
            return Refusal(scope, usage)
    yield _op(
        _INSERT_RESERVATION,
        {
            "id": reservation_id,
            "ttl": float(ttl_s),
            "scopes": json.dumps([[s.kind, s.key, s.day.isoformat()] for s, _, _ in scopes]),
            "usd": usd,
            "tokens": tokens,
            "model": model,
        },
    )
    return None


def settle_program(
    reservation_id: str,
    scopes: Sequence[ScopeRef],
    reserved_usd: float,
    reserved_tokens: int,
    spent_usd: float,
    spent_tokens: int,
    unreserved: bool = False,
) -> Program:
    """Move a reservation to spent at the actual usage; return whether it was still open.

    A reservation that already expired (and was reclaimed) only adds the actual spend. A
    call the budget let through unreserved (the store was down) is counted as a call too.
    """
    found = yield _op(_DELETE_RESERVATION, {"id": reservation_id})
    still_open = bool(found)
    for scope in sorted(scopes):
        yield _op(
            _SETTLE,
            {
                **_scope_params(scope),
                "reserved_usd": reserved_usd if still_open else 0.0,
                "reserved_tokens": reserved_tokens if still_open else 0,
                "spent_usd": spent_usd,
                "spent_tokens": spent_tokens,
                "calls": int(unreserved),
            },
        )
    return still_open


def reclaim_program() -> Program:
    """Release the reservations whose ``expires_at`` passed; return how many."""
    rows = yield _op(_RECLAIM, {})
    totals: dict[ScopeRef, list[float]] = {}
    for scopes, usd, tokens in rows:
        raw = scopes if isinstance(scopes, list) else json.loads(scopes)
        for kind, key, day in raw:
            ref = ScopeRef(kind, key, date.fromisoformat(day))
            slot = totals.setdefault(ref, [0.0, 0.0])
            slot[0] += usd
            slot[1] += tokens
    for scope in sorted(totals):
        usd_total, tokens_total = totals[scope]
        yield _op(
            _SETTLE,
            {
                **_scope_params(scope),
                "reserved_usd": usd_total,
                "reserved_tokens": int(tokens_total),
                "spent_usd": 0.0,
                "spent_tokens": 0,
                "calls": 0,
            },
        )
    return len(rows)


def read_program(scopes: Sequence[ScopeRef]) -> Program:
    """The current usage of each scope (zeros for a scope never used)."""
    out: dict[ScopeRef, ScopeUsage] = {}
    for scope in scopes:
        found = yield _op(_READ_ONE, _scope_params(scope))
        out[scope] = ScopeUsage(*found[0]) if found else ScopeUsage()
    return out


def run_sync(store: Store, program: Program, *, rollback_if: type | None = None) -> Any:
    """Run ``program`` in one transaction; roll back when its result is a ``rollback_if``."""
    with store.unreachable_as_error():
        return driver.run_sync(store.engine, program, rollback_if=rollback_if)


async def run_async(store: Store, program: Program, *, rollback_if: type | None = None) -> Any:
    """``run_sync`` on the store's async engine."""
    with store.unreachable_as_error(os_errors=True):
        return await driver.run_async(store.async_engine, program, rollback_if=rollback_if)
