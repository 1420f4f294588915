"""The engine under single-flight and request-id dedup: one call per key, shared answers.

Long because: the in-process and cross-process halves of one flight (leader, waiters,
advisory lock, hand-over row) share one protocol, written as sync and async twins.

Within a process, the first caller of a key leads and the others wait on its ``_Local``
(threads on an event, asyncio tasks on a future, so both kinds share one flight). Across
processes, the leader takes a PostgreSQL session advisory lock keyed by a hash of the key,
and writes its answer to ``graphthrift_flights`` before it lets go; a process that finds the
lock taken polls it, and on getting it reads the answer instead of calling. A leader that
crashes loses its session, so its lock is released at once and a waiter takes over.

Which stored answer a caller may take is the one difference between the two users:
single-flight takes only an answer finished after it asked (never a stale one), request-id
dedup takes one finished within its window. A store that is down degrades to in-process
coordination only (counted, logged): the call always goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.errors import RequestIdConflict, StoreUnavailable
from graphthrift.ledger.usage import Usage
from graphthrift.resilience.schema import FLIGHTS_TABLE
from graphthrift.store.postgres import Store

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Codec:
    """How an answer travels through the store: ``encode`` to JSON-able, ``decode`` back."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


JSON_CODEC = Codec(encode=lambda value: value, decode=lambda value: value)


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """A flight's outcome for one caller: the value, the leader's usage, and whether this
    caller got someone else's answer (``shared``) instead of calling itself."""

    value: T
    usage: Usage | None
    model: str | None
    shared: bool
    source: str  # "own", "local" (same process), "store" (handed over through the row)


def key_hash(kind: str, key: str, scope: Mapping[str, Any] | None) -> str:
    """One hex digest for a key and its scope: the same key under another tenant differs."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a {kind} key must be a non-empty string, got {key!r}")
    scope_items = sorted((str(k), str(v)) for k, v in (scope or {}).items() if v is not None)
    raw = json.dumps([kind, key, scope_items], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def lock_id(digest: str) -> int:
    """A signed 64-bit advisory lock id from a key hash."""
    return int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True)


def waiters_lock_id(digest: str) -> int:
    """The advisory lock every caller of the key holds shared while it waits or leads: a
    leader that can take it exclusively knows no other process waits for its answer."""
    return int.from_bytes(bytes.fromhex(digest[16:32]), "big", signed=True)


def usage_json(usage: Usage | None) -> str | None:
    if usage is None:
        return None
    return json.dumps(
        {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        }
    )


def usage_from(raw: Any) -> Usage | None:
    if raw is None:
        return None
    data = raw if isinstance(raw, Mapping) else json.loads(raw)
    return Usage(**{k: int(v) for k, v in data.items()})


_TRY_LOCK = text(f"""
    SELECT pg_try_advisory_lock(:lock) AS got, clock_timestamp() AS now,
           f.result, f.usage, f.model, f.fingerprint
    FROM (SELECT pg_advisory_lock_shared(:waiters) OFFSET 0) AS registered
    LEFT JOIN {FLIGHTS_TABLE} AS f
      ON f.key_hash = :key AND f.expires_at > now()
     AND f.finished_at >= clock_timestamp() - make_interval(secs => :window)
""")
# Single-flight (no window): an answer finished before this caller asked is never its answer,
# so there is no row to look up.
_TRY_LOCK_NOW = text("""
    SELECT pg_try_advisory_lock(:lock) AS got, clock_timestamp() AS now,
           NULL::jsonb AS result, NULL::jsonb AS usage, NULL::text AS model,
           NULL::text AS fingerprint
    FROM (SELECT pg_advisory_lock_shared(:waiters) OFFSET 0) AS registered
""")
# A leader with no caller of another process registered on the key: release the lock without
# writing the answer (nobody could read it). The waiters' key is taken exclusively for the
# length of this one statement, so a caller registering meanwhile waits a moment and then
# finds the lock free: it asked after the answer was finished, and calls the model itself.
_QUIET_UNLOCK = text("""
    SELECT s.quiet,
           CASE WHEN s.quiet THEN pg_advisory_unlock(:lock) END AS unlocked,
           CASE WHEN s.quiet THEN pg_advisory_unlock(:waiters) END AS released,
           pg_advisory_unlock_shared(:waiters) AS unregistered
    FROM (SELECT pg_try_advisory_lock(:waiters) AS quiet OFFSET 0) AS s
""")
_RELOCK = text("SELECT pg_try_advisory_lock(:lock)")
_READ = text(f"""
    SELECT result, usage, model, fingerprint FROM {FLIGHTS_TABLE}
    WHERE key_hash = :key AND expires_at > now() AND finished_at >= :since
""")
_WRITE = text(f"""
        INSERT INTO {FLIGHTS_TABLE} AS f
            (key_hash, kind, fingerprint, tenant_id, model, result, usage, started_at,
             finished_at, expires_at)
        VALUES (:key, :kind, :fingerprint, :tenant, :model, CAST(:result AS jsonb),
                CAST(:usage AS jsonb), :started, clock_timestamp(),
                clock_timestamp() + make_interval(secs => :keep))
        ON CONFLICT (key_hash) DO UPDATE SET
            kind = EXCLUDED.kind, fingerprint = EXCLUDED.fingerprint,
            tenant_id = EXCLUDED.tenant_id, model = EXCLUDED.model,
            result = EXCLUDED.result, usage = EXCLUDED.usage,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            expires_at = EXCLUDED.expires_at
""")
_UNLOCK_ALL = text("SELECT pg_advisory_unlock_all()")
_PURGE = text(f"""
    DELETE FROM {FLIGHTS_TABLE} WHERE key_hash IN (
        SELECT key_hash FROM {FLIGHTS_TABLE} WHERE expires_at < now() LIMIT 500)
""")


_LOCK_ENGINES: dict[str, Engine] = {}
_LOCK_ENGINES_LOCK = threading.Lock()


def _lock_engine_for(store: Store) -> Engine:
    """One lock-session engine per database per process, shared by every flight engine.

    Its connections keep their session (``Store.session_url``): a session advisory lock
    through a transaction pooler would stay on whichever server connection it landed on.
    """
    # a Store assembled without __init__ (a test's dead store) has only its engine
    session_url = getattr(store, "session_url", store.engine.url)
    if session_url is None:
        raise StoreUnavailable(
            store.display_url,
            "single-flight across processes needs a connection that keeps its session, and"
            " this URL goes through a transaction pooler: pass Store(session_url=...) (the"
            " server itself or a session-mode pool); until then flights are per process",
        )
    url = make_url(session_url)
    key = url.render_as_string(hide_password=False)
    with _LOCK_ENGINES_LOCK:
        engine = _LOCK_ENGINES.get(key)
        if engine is None:
            engine = _LOCK_ENGINES[key] = create_engine(
                url,
                pool_size=4,
                max_overflow=-1,
                isolation_level="AUTOCOMMIT",  # session locks, no transaction held open
                connect_args={"connect_timeout": 5},
            )
        return engine


class _Local:
    """One in-process flight: the leader fills it, threads and tasks wait on it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.answer: Answer[Any] | None = None
        self.error: BaseException | None = None
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.lock = threading.Lock()
        self.waiters = 0
        self.fingerprint: str | None = None

    def finish(self, answer: Answer[Any] | None, error: BaseException | None) -> None:
        with self.lock:
            self.answer, self.error = answer, error
            self.event.set()
            futures, self.futures = self.futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # a closed loop: its waiter is gone
                loop.call_soon_threadsafe(_wake, future)

    def future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self.lock:
            if self.event.is_set():
                future.set_result(None)
            else:
                self.futures.append((loop, future))
        return future


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True, slots=True)
class Ticket(Generic[T]):
    """One caller's request to a flight engine: the key hash and what to book with it."""

    key: str
    label: str
    usage_of: Callable[[T], Usage | None]
    model: str | None = None
    tenant: str | None = None
    fingerprint: str | None = None

    @classmethod
    def for_call(
        cls,
        layer: str,
        key: str,
        scope: Mapping[str, Any] | None,
        *,
        model: str | None,
        usage_of: Callable[[Any], Usage | None] | None,
        tags: Mapping[str, Any] | None,
        fingerprint: str | None = None,
    ) -> tuple[Ticket[Any], dict[str, Any]]:  # Any: the caller's T
        """A caller's ticket (the key hashed with its scope) and the tags its dedup row gets."""
        all_tags = {**(scope or {}), **(tags or {})}
        tenant = all_tags.get("tenant_id")
        ticket: Ticket[Any] = Ticket(
            key=key_hash(layer, key, scope),
            label=key,
            usage_of=usage_of or _no_usage,
            model=model,
            tenant=None if tenant is None else str(tenant),
            fingerprint=fingerprint,
        )
        return ticket, all_tags


def _no_usage(_: Any) -> Usage | None:
    return None


@dataclass(slots=True)
class _Held:
    """A leader's hold on the cross-process lock (None fields: store down, no lock)."""

    conn: Connection | None
    lock: int
    started: datetime | None
    stored: Answer[Any] | None = None


@dataclass(slots=True)
class FlightStats:
    """What a flight engine did in this process."""

    calls: int = 0
    shared_local: int = 0
    shared_store: int = 0
    wait_timeouts: int = 0
    store_failures: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class FlightEngine:
    """One call per key at a time, answers handed to the callers that waited (see module)."""

    def __init__(
        self,
        store: Store | None,
        *,
        kind: str,
        window_s: float,
        keep_s: float,
        wait_timeout: float,
        poll_interval: float,
        codec: Codec,
    ) -> None:
        for name, value in (
            ("wait_timeout", wait_timeout),
            ("keep_s", keep_s),
            ("poll_interval", poll_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0 seconds, got {window_s!r}")
        self.store = store
        self.kind = kind
        self.window_s = window_s
        self.keep_s = keep_s
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.codec = codec
        self.stats = FlightStats()
        self._flights: dict[str, _Local] = {}
        self._lock = threading.Lock()
        self._leads = 0
        self._lock_engine: Engine | None = None

    def _sessions(self) -> Engine:
        """The engine whose connections hold the advisory locks.

        A leader holds its session for the whole provider call, so these connections come
        from a pool of their own, unbounded (one per distinct call in flight): they never
        starve the store's pool, which the ledger, budgets and caches share.
        """
        if self._lock_engine is None:
            assert self.store is not None
            self._lock_engine = _lock_engine_for(self.store)
        return self._lock_engine

    # -- the in-process part ---------------------------------------------------------------

    def _join(self, ticket: Ticket[Any]) -> tuple[_Local, bool]:
        with self._lock:
            local = self._flights.get(ticket.key)
            if local is not None:
                theirs, ours = local.fingerprint, ticket.fingerprint
                if theirs is not None and ours is not None and theirs != ours:
                    raise RequestIdConflict(ticket.label, theirs, ours)
                local.waiters += 1
                return local, False
            local = self._flights[ticket.key] = _Local()
            local.fingerprint = ticket.fingerprint
            return local, True

    def waiting(self) -> int:
        """Callers of this process now waiting on a leader here (for tests and metrics)."""
        with self._lock:
            return sum(local.waiters for local in self._flights.values())

    def _end(self, digest: str, local: _Local, answer: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._flights.get(digest) is local:
                del self._flights[digest]
        local.finish(answer, error)

    def _shared(self, local: _Local) -> Answer[Any]:
        if local.error is not None:
            raise local.error
        assert local.answer is not None
        self.stats.shared_local += 1
        a = local.answer
        return Answer(a.value, a.usage, a.model, True, "local")

    def run(self, ticket: Ticket[T], fn: Callable[[], T]) -> Answer[T]:
        """Call ``fn`` once for every concurrent caller of ``ticket.key``."""
        local, leader = self._join(ticket)
        if not leader:
            if local.event.wait(self.wait_timeout):
                return self._shared(local)
            self._timed_out()
            return self._own(fn(), ticket)
        try:
            answer = self._lead(ticket, fn)
        except BaseException as exc:
            self._end(ticket.key, local, None, exc)
            raise
        self._end(ticket.key, local, answer, None)
        return answer

    async def arun(self, ticket: Ticket[T], fn: Callable[[], Awaitable[T]]) -> Answer[T]:
        """``run`` for coroutines; shares flights with threads of the same process."""
        local, leader = self._join(ticket)
        if not leader:
            try:
                await asyncio.wait_for(local.future(), self.wait_timeout)
            except TimeoutError:
                self._timed_out()
                return self._own(await fn(), ticket)
            return self._shared(local)
        try:
            answer = await self._alead(ticket, fn)
        except BaseException as exc:
            self._end(ticket.key, local, None, exc)
            raise
        self._end(ticket.key, local, answer, None)
        return answer

    def _timed_out(self) -> None:
        self.stats.wait_timeouts += 1
        diagnostics.count(
            f"{self.kind}_wait_timeout",
            "graphthrift %s: waited %.1fs for the leading call; calling the model directly",
            self.kind,
            self.wait_timeout,
        )

    def _own(self, value: T, ticket: Ticket[T]) -> Answer[T]:
        self.stats.calls += 1
        return Answer(value, ticket.usage_of(value), ticket.model, False, "own")

    # -- the cross-process part ------------------------------------------------------------

    def _lead(self, ticket: Ticket[T], fn: Callable[[], T]) -> Answer[T]:
        held = self._acquire(ticket)
        if held.stored is not None:
            return held.stored
        try:
            value = fn()
        except BaseException:
            self._release(held)
            raise
        answer = self._own(value, ticket)
        self._publish(held, ticket, answer)
        return answer

    async def _alead(self, ticket: Ticket[T], fn: Callable[[], Awaitable[T]]) -> Answer[T]:
        held = await asyncio.to_thread(self._acquire, ticket)
        if held.stored is not None:
            return held.stored
        try:
            value = await fn()
        except BaseException:
            await asyncio.to_thread(self._release, held)
            raise
        answer = self._own(value, ticket)
        await asyncio.to_thread(self._publish, held, ticket, answer)
        return answer

    def _store_failed(self, exc: BaseException) -> None:
        self.stats.store_failures += 1
        diagnostics.count(
            f"{self.kind}_store_failure",
            "graphthrift %s: store unavailable (%s); coordinating within this process only",
            self.kind,
            exc,
        )

    def _acquire(self, ticket: Ticket[Any]) -> _Held:
        """Take the key's advisory lock, or find the answer of whoever holds it."""
        key = ticket.key
        lock = lock_id(key)
        if self.store is None:
            return _Held(None, lock, None)
        conn: Connection | None = None
        try:
            conn = self._sessions().connect()
            params: dict[str, Any] = {"lock": lock, "waiters": waiters_lock_id(key)}
            if self.window_s == 0:
                row = conn.execute(_TRY_LOCK_NOW, params).one()
            else:
                row = conn.execute(_TRY_LOCK, {**params, "key": key, "window": self.window_s}).one()
            got, started = bool(row.got), row.now
            stored = self._answer(row, ticket)
            deadline = time.monotonic() + self.wait_timeout
            while not got and stored is None:
                if time.monotonic() >= deadline:
                    self._timed_out()
                    conn.execute(_UNLOCK_ALL)  # its registration as a waiter
                    conn.close()
                    return _Held(None, lock, None)
                time.sleep(self.poll_interval)
                got = bool(conn.execute(_RELOCK, {"lock": lock}).scalar())
                read = conn.execute(
                    _READ, {"key": key, "since": self._since(started)}
                ).one_or_none()
                stored = self._answer(read, ticket)
            if stored is not None:
                conn.execute(_UNLOCK_ALL)  # the lock if it got it, and its registration
                conn.close()
                self.stats.shared_store += 1
                return _Held(None, lock, started, stored)
            return _Held(conn, lock, started)
        except RequestIdConflict:
            if conn is not None:
                conn.execute(_UNLOCK_ALL)
                conn.close()
            raise
        except (SQLAlchemyError, StoreUnavailable, OSError) as exc:
            if conn is not None:
                conn.invalidate()
                conn.close()
            self._store_failed(exc)
            return _Held(None, lock, None)

    def _since(self, started: datetime) -> datetime:
        return started - timedelta(seconds=self.window_s)

    def _answer(self, row: Any, ticket: Ticket[Any]) -> Answer[Any] | None:
        if row is None or row.result is None:
            return None
        stored_fp, given = row.fingerprint, ticket.fingerprint
        if given is not None and stored_fp is not None and stored_fp != given:
            raise RequestIdConflict(ticket.label, stored_fp, given)
        payload = row.result if not isinstance(row.result, str) else json.loads(row.result)
        value = self.codec.decode(payload["value"])
        return Answer(value, usage_from(row.usage), row.model, True, "store")

    def _release(self, held: _Held) -> None:
        if held.conn is None:
            return
        try:
            held.conn.execute(_UNLOCK_ALL)  # the lock and its registration as a caller
            held.conn.close()
        except (SQLAlchemyError, OSError) as exc:  # the session is gone, so is its lock
            held.conn.invalidate()
            self._store_failed(exc)

    def _publish(self, held: _Held, ticket: Ticket[Any], answer: Answer[Any]) -> None:
        """Write (and commit) the answer for the waiters, then release the lock.

        Two statements: an unlock inside the writing statement would let a waiter in before
        the row is committed, and it would call the model again. A single-flight answer is
        only for callers waiting now: with none registered in another process, one statement
        releases the lock and nothing is written (the no-fault path's third round trip)."""
        if held.conn is None:
            return
        try:
            if self.window_s == 0:
                quiet = held.conn.execute(
                    _QUIET_UNLOCK, {"lock": held.lock, "waiters": waiters_lock_id(ticket.key)}
                ).one()
                if quiet.quiet:
                    self._leads += 1
                    held.conn.close()
                    return
            held.conn.execute(
                _WRITE,
                {
                    "key": ticket.key,
                    "kind": self.kind,
                    "fingerprint": ticket.fingerprint,
                    "tenant": ticket.tenant,
                    "model": answer.model,
                    "result": json.dumps({"value": self.codec.encode(answer.value)}),
                    "usage": usage_json(answer.usage),
                    "started": held.started,
                    "keep": self.keep_s,
                },
            )
            held.conn.execute(_UNLOCK_ALL)  # the lock and its registration as a caller
            self._leads += 1
            if self._leads % 200 == 0:
                held.conn.execute(_PURGE)
            held.conn.close()
        except (TypeError, ValueError) as exc:  # an answer the codec cannot write
            diagnostics.count(
                f"{self.kind}_unencodable",
                "graphthrift %s: the answer could not be stored (%s); pass a codec",
                self.kind,
                exc,
            )
            self._release(held)
        except (SQLAlchemyError, OSError) as exc:
            held.conn.invalidate()
            self._store_failed(exc)
