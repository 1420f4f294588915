"""The one sans-IO driver: an operation written once as a generator, run sync or async.

An operation (a cache plan, a budget program) never does I/O itself: it yields a request
and receives the reply. ``drive`` answers each request with a plain function, ``adrive``
with a coroutine function, so the sync and async paths share every line of logic.
``run_sync`` and ``run_async`` are that pair for SQL: each ``Sql`` request is executed on
one connection inside one transaction, and its rows are sent back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Engine, TextClause, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
Request = TypeVar("Request")
Reply = TypeVar("Reply")


def drive(program: Generator[Request, Reply, T], answer: Callable[[Request], Reply]) -> T:
    """Run ``program`` to its end, answering each request it yields with ``answer``."""
    try:
        request = next(program)
        while True:
            request = program.send(answer(request))
    except StopIteration as stop:
        return cast(T, stop.value)


async def adrive(
    program: Generator[Request, Reply, T], answer: Callable[[Request], Awaitable[Reply]]
) -> T:
    """``drive`` with an async ``answer``."""
    try:
        request = next(program)
        while True:
            request = program.send(await answer(request))
    except StopIteration as stop:
        return cast(T, stop.value)


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement of a plan.

    ``fetch`` says whether its rows are sent back; ``rows`` whether as dicts (by column
    name) or as tuples (by position).
    """

    sql: str | TextClause
    params: Mapping[str, Any] = field(default_factory=dict)
    fetch: bool = True
    rows: Literal["dicts", "tuples"] = "dicts"


Plan = Generator[Sql, list[Any], T]

_texts: dict[str, TextClause] = {}


def _clause(sql: str | TextClause) -> TextClause:
    if isinstance(sql, TextClause):
        return sql
    clause = _texts.get(sql)
    if clause is None:
        clause = _texts[sql] = text(sql)
    return clause


def _rows(step: Sql, result: CursorResult[Any]) -> list[Any]:
    if not step.fetch:
        return []
    if step.rows == "tuples":
        return list(result.all())
    return [dict(r._mapping) for r in result]


def _set_timeout(seconds: float) -> TextClause:
    return _clause(f"SET LOCAL statement_timeout = {int(seconds * 1000)}")


class _Rollback(Exception):
    """Raised inside a transaction to roll it back while carrying the plan's result."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value


def _kept(value: T, rollback_if: type | None) -> T:
    if rollback_if is not None and isinstance(value, rollback_if):
        raise _Rollback(value)
    return value


def run_sync(
    engine: Engine,
    plan: Plan[T],
    statement_timeout: float | None = None,
    *,
    rollback_if: type | None = None,
) -> T:
    """Drive ``plan`` on a pooled connection, in one transaction.

    ``statement_timeout`` (seconds) holds for this transaction only; a result that is a
    ``rollback_if`` is returned with the transaction rolled back.
    """
    try:
        with engine.begin() as conn:
            if statement_timeout is not None:
                conn.execute(_set_timeout(statement_timeout))
            value = drive(
                plan, lambda step: _rows(step, conn.execute(_clause(step.sql), step.params))
            )
            return _kept(value, rollback_if)
    except _Rollback as rolled:
        return cast(T, rolled.value)


async def run_async(
    engine: AsyncEngine,
    plan: Plan[T],
    statement_timeout: float | None = None,
    *,
    rollback_if: type | None = None,
) -> T:
    """``run_sync`` on an asyncio engine."""
    try:
        async with engine.begin() as conn:
            if statement_timeout is not None:
                await conn.execute(_set_timeout(statement_timeout))

            async def answer(step: Sql) -> list[Any]:
                return _rows(step, await conn.execute(_clause(step.sql), step.params))

            value = await adrive(plan, answer)
            return _kept(value, rollback_if)
    except _Rollback as rolled:
        return cast(T, rolled.value)
