"""The one sans-IO driver (``graphthrift.store.driver``) that cache plans and budget programs share.

One plan, run sync and async on the real PostgreSQL, must see the same rows, roll back as a
whole when its result asks for it, and obey a per-transaction statement timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from graphthrift.store import Store
from graphthrift.store.driver import Plan, Sql, adrive, drive, run_async, run_sync


class Refused:
    """A plan result that must not be committed."""


def _table_plan(name: str, *, refuse: bool = False) -> Plan[Any]:
    yield Sql(f"CREATE TABLE {name} (x int)", fetch=False)
    yield Sql(f"INSERT INTO {name} VALUES (2), (1)", fetch=False)
    dicts = yield Sql(f"SELECT x FROM {name} ORDER BY x")
    tuples = yield Sql(f"SELECT x FROM {name} ORDER BY x", rows="tuples")
    return Refused() if refuse else (dicts, [tuple(t) for t in tuples])


def _exists(store: Store, name: str) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None


def _drop(store: Store, name: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


def _name() -> str:
    return f"gt_driver_{uuid.uuid4().hex[:12]}"


def _counter() -> Generator[int, int, list[int]]:
    seen = [(yield 1)]
    seen.append((yield 2))
    return seen


def test_drive_and_adrive_answer_the_same_program() -> None:
    import asyncio

    async def double(n: int) -> int:
        return n * 2

    assert drive(_counter(), lambda n: n * 10) == [10, 20]
    assert asyncio.run(adrive(_counter(), double)) == [2, 4]


def test_run_sync_sends_rows_as_dicts_or_tuples_and_commits(store: Store) -> None:
    name = _name()
    try:
        result = run_sync(store.engine, _table_plan(name))
        assert result == ([{"x": 1}, {"x": 2}], [(1,), (2,)])
        assert _exists(store, name)
    finally:
        _drop(store, name)


async def test_run_async_gives_what_run_sync_gives(store: Store) -> None:
    name = _name()
    try:
        result = await run_async(store.async_engine, _table_plan(name))
        assert result == ([{"x": 1}, {"x": 2}], [(1,), (2,)])
        assert _exists(store, name)
    finally:
        _drop(store, name)


def test_rollback_if_returns_the_result_and_keeps_nothing(store: Store) -> None:
    name = _name()
    result = run_sync(store.engine, _table_plan(name, refuse=True), rollback_if=Refused)
    assert isinstance(result, Refused)
    assert not _exists(store, name)


async def test_async_rollback_if_keeps_nothing(store: Store) -> None:
    name = _name()
    plan = _table_plan(name, refuse=True)
    result = await run_async(store.async_engine, plan, rollback_if=Refused)
    assert isinstance(result, Refused)
    assert not _exists(store, name)


def test_statement_timeout_holds_for_the_plan(store: Store) -> None:
    def slow() -> Plan[None]:
        yield Sql("SELECT pg_sleep(5)")

    with pytest.raises(OperationalError, match="statement timeout"):
        run_sync(store.engine, slow(), statement_timeout=0.05)
