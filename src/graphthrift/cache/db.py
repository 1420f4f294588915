"""How the caches talk to PostgreSQL: their own pools, and lookups under a deadline.

A cache operation is written once, as a plan (a generator that yields ``Sql`` statements and
receives their rows), and run by the store's one sans-IO driver (``graphthrift.store.driver``:
``run_sync``/``run_async``, re-exported here), so the sync and async paths share every line
of logic. Lookups go through ``CacheEngines``, a
connection pool of the cache's own with ``statement_timeout`` and the HNSW settings set at
connect time (no extra round trip per lookup), a short pool wait and a connect timeout.
A lookup also runs under a client-side deadline, so a hung network cannot hold the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import weakref
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from graphthrift.store.driver import Plan, Sql, run_async, run_sync
from graphthrift.store.postgres import Store

__all__ = [
    "CacheEngines",
    "Plan",
    "Settings",
    "Sql",
    "awith_deadline",
    "run_async",
    "run_sync",
    "with_deadline",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settings:
    """Connection settings of the cache pool (part of the pool's identity)."""

    timeout: float
    ef_search: int


class CacheEngines:
    """The cache's own sync and async pools on a store's database, shared per settings."""

    _registry: ClassVar[weakref.WeakKeyDictionary[Store, dict[Settings, CacheEngines]]] = (
        weakref.WeakKeyDictionary()
    )
    _registry_lock = threading.Lock()

    @classmethod
    def for_store(cls, store: Store, settings: Settings) -> CacheEngines:
        with cls._registry_lock:
            per_store = cls._registry.setdefault(store, {})
            engines = per_store.get(settings)
            if engines is None:
                engines = per_store[settings] = cls(store, settings)
            return engines

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        timeout_ms = max(1, int(settings.timeout * 1000))
        options = (
            f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
            f" -c hnsw.ef_search={settings.ef_search} -c hnsw.iterative_scan=strict_order"
            # a cache may lose its last writes in a crash; not waiting for the WAL flush
            # keeps hits (which touch last_used_at) and stores fast
            " -c synchronous_commit=off"
        )
        self._connect_args = {
            "connect_timeout": max(1, math.ceil(settings.timeout)),
            "options": options,
            "tcp_user_timeout": max(1, int(settings.timeout * 1000)),
        }
        self.engine: Engine = create_engine(
            store.url,
            pool_size=4,
            max_overflow=4,
            pool_timeout=settings.timeout,
            pool_pre_ping=False,  # a stale connection fails one lookup open, then is replaced
            connect_args=self._connect_args,
        )
        # lookups run statement by statement, without BEGIN/COMMIT round trips
        self.read_engine: Engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # An async pool belongs to the event loop that opened its connections: one per loop,
        # so a second ``asyncio.run`` (or a test per loop) gets its own instead of failing.
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncEngine, AsyncEngine]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def _async_pair(self) -> tuple[AsyncEngine, AsyncEngine]:
        loop = asyncio.get_running_loop()
        with self._lock:
            pair = self._async.get(loop)
            if pair is None:
                engine = create_async_engine(
                    self.store.url,
                    pool_size=4,
                    max_overflow=4,
                    pool_timeout=self.settings.timeout,
                    pool_pre_ping=False,
                    connect_args=self._connect_args,
                )
                pair = (engine, engine.execution_options(isolation_level="AUTOCOMMIT"))
                self._async[loop] = pair
            return pair

    @property
    def async_engine(self) -> AsyncEngine:
        """The running event loop's async pool (call from inside a coroutine)."""
        return self._async_pair()[0]

    @property
    def async_read_engine(self) -> AsyncEngine:
        """The running event loop's autocommit view of ``async_engine``."""
        return self._async_pair()[1]

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=8, thread_name_prefix="graphthrift-cache"
                )
            return self._executor

    def dispose(self) -> None:
        self.engine.dispose()
        for engine, _ in list(self._async.values()):
            engine.sync_engine.dispose()


def with_deadline(engines: CacheEngines, plan: Plan[T], timeout: float) -> T:
    """``run_sync`` bounded by ``timeout`` seconds (``TimeoutError`` past it).

    With an idle pooled connection the plan runs inline: the server's statement_timeout and
    lock_timeout, and the socket's tcp_user_timeout, bound it without a thread hop. When a
    new connection must be opened (libpq's connect timeout counts in whole seconds), the plan
    runs in a worker thread that the caller waits on for at most ``timeout``.
    """
    pool = engines.engine.pool
    checkedin = getattr(pool, "checkedin", None)
    if checkedin is not None and checkedin() > 0:
        return run_sync(engines.read_engine, plan)
    future = engines.executor.submit(run_sync, engines.read_engine, plan)
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"cache lookup exceeded {timeout:.3f}s") from None


async def awith_deadline(engines: CacheEngines, plan: Plan[T], timeout: float) -> T:
    """``run_async`` under ``asyncio.timeout``."""
    try:
        async with asyncio.timeout(timeout):
            return await run_async(engines.async_read_engine, plan)
    except TimeoutError:
        raise TimeoutError(f"cache lookup exceeded {timeout:.3f}s") from None
