"""The client-side deadline on every connection of a store's URL.

Every connection opened on a store's URL, by the store or by anything that builds an engine
from ``Store.url`` (the caches do), waits at most a client-side deadline for each answer from
the server: ``query_timeout`` by default, or derived from the connection's
``statement_timeout`` when it sets one. Past it the connection is closed, the operation fails
with ``StoreUnavailable`` (counted as ``store_timeout``), and the caller fails open or closed
as it is configured. A server-side ``statement_timeout`` alone cannot do this: a stopped
server (SIGSTOP, a stalled disk or network) never answers at all.

The URL names the SQLAlchemy plugin ``DeadlinePlugin`` (``PLUGIN_NAME``) and carries the
default deadline (``TIMEOUT_PARAM``), so engines built from it anywhere get the deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import waiting
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, event
from sqlalchemy.dialects import plugins
from sqlalchemy.engine import URL, CreateEnginePlugin

from graphthrift import diagnostics

PLUGIN_NAME = "graphthrift_deadline"
TIMEOUT_PARAM = "graphthrift_query_timeout"

_UNSET: Any = object()
_override: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "graphthrift_store_deadline", default=_UNSET
)
_STATEMENT_TIMEOUT = re.compile(r"statement_timeout\s*=\s*'?(\d+)(ms|s)?", re.IGNORECASE)
_SET_STATEMENT_TIMEOUT = re.compile(
    r"^\s*SET\s+(?:LOCAL\s+|SESSION\s+)?statement_timeout\s*(?:=|TO)\s*'?(\d+)(ms|s)?",
    re.IGNORECASE,
)
_WaitTimeout: type[BaseException] = getattr(psycopg.errors, "_WaitTimeout", TimeoutError)


def _from_statement_timeout(milliseconds: float) -> float | None:
    """A client deadline that lets the server's own statement_timeout fire first."""
    if milliseconds <= 0:  # statement_timeout = 0: the server never cancels
        return None
    seconds = milliseconds / 1000
    return seconds + max(0.1, seconds / 2)


def _parse_timeout(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    value = float(match.group(1))
    return value * 1000 if (match.group(2) or "ms").lower() == "s" else value


def _limit(conn: Any) -> tuple[float | None, bool]:
    """The deadline of one round trip on ``conn`` and whether it is hard.

    ``Store.deadline``, then ``SET statement_timeout``, then the connect-time
    ``statement_timeout`` are hard; the store's ``query_timeout`` is soft (see
    ``_DeadlineConnection``).
    """
    override = _override.get()
    if override is not _UNSET:
        return override, True
    set_in_transaction: float | None = getattr(conn, "_gt_set", None)
    if set_in_transaction is not None:
        return set_in_transaction, True
    base: float | None = getattr(conn, "_gt_base", None)
    return base, not getattr(conn, "_gt_soft", False)


class _Expired(Exception):
    """Raised inside psycopg's wait loop when a deadline passes."""


_PROBE_SECONDS = 2  # libpq's shortest connect timeout


def _still_working(conn: Any) -> bool:
    """Whether the server answers a second connection and is still running ``conn``'s query.

    Tells a server that is stopped (no answer: give up) from one that is busy with a long
    statement, an index build or a bulk insert (keep waiting).
    """
    args, params = getattr(conn, "_gt_params", None) or ((), {})
    params = {**params, "connect_timeout": _PROBE_SECONDS, "autocommit": True}
    try:
        probe = _DeadlineConnection.connect(*args, **params)
    except Exception:
        return False
    try:
        probe._gt_base = float(_PROBE_SECONDS)
        row = probe.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (conn.info.backend_pid,)
        ).fetchone()
    except Exception:
        return False
    finally:
        probe.close()
    return row is not None and row[0] == "active"


def _watched(conn: Any, gen: Any, limit: float, hard: bool) -> Any:
    """``gen``, checked against the deadline each time psycopg's wait loop resumes it.

    psycopg resumes a waiting generator at least every ``interval`` (0.1 s), data or not.
    """
    deadline = time.monotonic() + limit
    try:
        state = next(gen)
        while True:
            ready = yield state
            state = gen.send(ready)
            if time.monotonic() >= deadline:
                if hard or not _still_working(conn):
                    raise _Expired
                deadline = time.monotonic() + limit
    except StopIteration as stop:
        return stop.value


def _timed_out(conn: Any, limit: float) -> psycopg.OperationalError:
    conn.pgconn.finish()  # the connection's state is unknown: never reuse it
    diagnostics.count(
        "store_timeout",
        "graphthrift: the database did not answer within %gs; the connection was dropped",
        limit,
    )
    return psycopg.OperationalError(
        f"graphthrift: the database did not answer within {limit:g}s (client-side deadline);"
        " the connection was closed"
    )


class _DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait on the server has a deadline.

    A hard deadline drops the connection when it passes. A soft one (the store's default
    ``query_timeout``, on connections that set no ``statement_timeout``) first asks the
    server, on a second connection, whether it is still running the query: a stopped server
    cannot answer and the connection is dropped; a busy one is waited for, another period.
    """

    _gt_base: float | None = None
    _gt_set: float | None = None
    _gt_soft = False
    _gt_params: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        limit, hard = _limit(self)
        if limit is None or (timeout is not None and timeout <= limit):
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(_watched(self, gen, limit, hard), min(interval, 0.1), timeout)
        except _Expired:
            raise _timed_out(self, limit) from None


class _DeadlineAsyncConnection(psycopg.AsyncConnection[Any]):
    """The asyncio twin; a cancelled wait drops the connection at once.

    psycopg answers a cancelled query by asking the server to cancel it and waiting up to
    10 s for that, which is what made an ``asyncio.timeout`` around a lookup on a stopped
    server take 8 s; a connection whose query was cancelled is closed instead.
    """

    _gt_base: float | None = None
    _gt_set: float | None = None

    async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        limit, _ = _limit(self)  # always hard: a probe would block the event loop
        if limit is not None and (timeout is None or timeout > limit):
            timeout = limit
        else:
            limit = None
        try:
            return await waiting.wait_async(
                gen, self.pgconn.socket, interval=interval, timeout=timeout
            )
        except _WaitTimeout:
            if limit is None:
                raise
            raise _timed_out(self, limit) from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            if self.pgconn.transaction_status == TransactionStatus.ACTIVE:
                self.pgconn.finish()
                diagnostics.count("store_cancelled")
            raise


class DeadlinePlugin(CreateEnginePlugin):
    """SQLAlchemy plugin named in ``Store.url``: engines built from it get the deadline."""

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        raw = url.query.get(TIMEOUT_PARAM)
        raw = raw[0] if isinstance(raw, tuple) else raw
        self.default = None if raw in (None, "", "none") else float(raw)

    def update_url(self, url: URL) -> URL:
        return url.difference_update_query([TIMEOUT_PARAM])

    def engine_created(self, engine: Engine) -> None:
        event.listen(engine, "do_connect", self._do_connect)
        event.listen(engine, "before_cursor_execute", _track_set_timeout)
        event.listen(engine, "commit", _end_transaction)
        event.listen(engine, "rollback", _end_transaction)

    def _do_connect(self, dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        # cparams is the engine's own dict, shared by every connect: never change a setting
        from_statement_timeout = _from_statement_timeout_option(cparams.get("options"))
        base = from_statement_timeout or self.default
        if dialect.is_async:
            if "async_creator_fn" not in cparams:

                async def connect(*args: Any, **kwargs: Any) -> Any:
                    conn = await _DeadlineAsyncConnection.connect(
                        *args, **_bounded_connect(kwargs, base)
                    )
                    conn._gt_base = base
                    return conn

                cparams["async_creator_fn"] = connect
            return None
        params = _bounded_connect(cparams, base)
        conn = _DeadlineConnection.connect(*cargs, **params)
        conn._gt_base = base
        conn._gt_soft = from_statement_timeout is None
        conn._gt_params = (tuple(cargs), params)  # for the liveness probe, in memory
        return conn


def _bounded_connect(params: dict[str, Any], base: float | None) -> dict[str, Any]:
    """``params`` with a connect timeout no longer than the deadline in force.

    A stopped server accepts the socket and never answers the handshake; libpq counts the
    connect timeout in whole seconds, at least 2.
    """
    override = _override.get()
    limit = base if override is _UNSET else override
    if limit is None:
        return dict(params)
    configured = float(params.get("connect_timeout") or math.inf)
    return {**params, "connect_timeout": int(min(configured, max(2, math.ceil(limit))))}


def _from_statement_timeout_option(options: Any) -> float | None:
    if not isinstance(options, str):
        return None
    milliseconds = _parse_timeout(_STATEMENT_TIMEOUT.search(options))
    return None if milliseconds is None else _from_statement_timeout(milliseconds)


def _track_set_timeout(
    conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
) -> None:
    """``SET [LOCAL] statement_timeout`` moves the deadline with it, for this transaction."""
    if "statement_timeout" not in statement:
        return
    milliseconds = _parse_timeout(_SET_STATEMENT_TIMEOUT.match(statement))
    if milliseconds is not None:
        driver = conn.connection.driver_connection
        driver._gt_set = _from_statement_timeout(milliseconds)


def _end_transaction(conn: Any) -> None:
    if conn.invalidated or conn.closed:  # reading .connection would try to reconnect
        return
    driver = getattr(conn.connection, "driver_connection", None)
    if driver is not None and getattr(driver, "_gt_set", None) is not None:
        driver._gt_set = None


plugins.register(PLUGIN_NAME, __name__, "DeadlinePlugin")


@contextmanager
def deadline_scope(seconds: float | None) -> Iterator[None]:
    """Give each answer from the server inside this block ``seconds`` (None: no limit).

    For this thread or task only, on every connection that carries the deadline plugin.
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(f"a deadline must be > 0 seconds or None, got {seconds}")
    token = _override.set(seconds)
    try:
        yield
    finally:
        _override.reset(token)
