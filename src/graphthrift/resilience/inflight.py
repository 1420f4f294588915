"""Work in flight, recorded in the store, so a restarted process knows what was interrupted.

A drain that runs out of grace period, or a ``kill -9``, leaves work half done: a LangGraph
run stopped between super-steps, a job that never answered. Without a record, the next
process cannot tell. ``InFlightLog`` writes one row per unit of work to
``graphthrift_inflight`` when it starts (its key, thread, run, tenant, payload and owner
process) and marks it done when it finishes. A drain marks what is still running
``interrupted`` (with the reason and the seconds it ran) and books a ``kind="interrupted"``
ledger row. After a ``kill -9`` nothing runs, so the next process finds the rows still
``running`` whose owner is gone (its pid no longer runs on this host, or its lease lapsed)
and marks them interrupted itself. ``claim`` hands each interrupted unit to exactly one
process (one conditional ``UPDATE``), which resumes it and marks it done.

Statuses: ``running`` -> ``done`` (finished), or ``running`` -> ``interrupted`` ->
``resumed`` (claimed) -> ``done``; a resumed unit whose resumer dies or fails is interrupted
again, so it is never lost and never run twice at once.

Long because: the unit's whole life (start, finish, interrupt, lease renewal, reaping dead
owners, claim, resume, and its ledger row) is one protocol over one table, and split across
modules its status transitions could no longer be read in one place.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.errors import StoreUnavailable
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import TAG_FIELDS, LedgerRecord
from graphthrift.resilience.schema import INFLIGHT_TABLE
from graphthrift.store.postgres import Store

T = TypeVar("T")

__all__ = ["InFlightLog", "InFlightUnit", "ResumeReport"]

RUNNING, INTERRUPTED, RESUMED, DONE = "running", "interrupted", "resumed", "done"
LAYER = "graceful_shutdown"

_COLUMNS = (
    "unit_id, key, tenant_id, thread_id, run_id, checkpoint_ns, payload, tags, status, owner,"
    " owner_host, owner_pid, started_at, reason, elapsed_s, claims"
)
_START = text(f"""
    INSERT INTO {INFLIGHT_TABLE} (unit_id, key, tenant_id, thread_id, run_id, checkpoint_ns,
        payload, tags, status, owner, owner_host, owner_pid, started_at, lease_until)
    VALUES (:id, :key, :tenant, :thread, :run, :ns, CAST(:payload AS jsonb),
        CAST(:tags AS jsonb), 'running', :owner, :host, :pid, now(),
        now() + make_interval(secs => :lease))
""")
_DONE = text(f"""
    UPDATE {INFLIGHT_TABLE} SET status = 'done', updated_at = now(),
        elapsed_s = EXTRACT(EPOCH FROM (now() - started_at))
    WHERE unit_id = :id AND owner = :owner AND status IN ('running', 'resumed', 'interrupted')
""")
_INTERRUPT = text(f"""
    UPDATE {INFLIGHT_TABLE} SET status = 'interrupted', reason = :reason, updated_at = now(),
        elapsed_s = EXTRACT(EPOCH FROM (now() - started_at))
    WHERE unit_id IN :ids AND owner = :owner AND status IN ('running', 'resumed')
    RETURNING {_COLUMNS}
""").bindparams(bindparam("ids", expanding=True))
_RENEW = text(f"""
    UPDATE {INFLIGHT_TABLE} SET lease_until = now() + make_interval(secs => :lease)
    WHERE owner = :owner AND status IN ('running', 'resumed')
""")
_SUSPECTS = text(f"""
    SELECT unit_id, owner, owner_host, owner_pid, status, lease_until < now() AS lapsed
    FROM {INFLIGHT_TABLE}
    WHERE status IN ('running', 'resumed') AND (lease_until < now() OR owner_host = :host)
    LIMIT 1000
""")
_REAP = text(f"""
    UPDATE {INFLIGHT_TABLE} SET status = 'interrupted', reason = :reason, updated_at = now(),
        elapsed_s = EXTRACT(EPOCH FROM (now() - started_at))
    WHERE unit_id = :id AND owner = :owner AND status = :status
    RETURNING {_COLUMNS}
""")
_LIST = text(f"""
    SELECT {_COLUMNS} FROM {INFLIGHT_TABLE}
    WHERE status = 'interrupted' AND (CAST(:tenant AS text) IS NULL OR tenant_id = :tenant)
    ORDER BY started_at, unit_id LIMIT :limit
""")
_CLAIM = text(f"""
    UPDATE {INFLIGHT_TABLE} SET status = 'resumed', owner = :owner, owner_host = :host,
        owner_pid = :pid, lease_until = now() + make_interval(secs => :lease),
        updated_at = now(), claims = claims + 1
    WHERE unit_id = :id AND status = 'interrupted'
    RETURNING {_COLUMNS}
""")
_GET = text(f"SELECT {_COLUMNS} FROM {INFLIGHT_TABLE} WHERE unit_id = :id")
_PURGE = text(f"""
    DELETE FROM {INFLIGHT_TABLE} WHERE unit_id IN (
        SELECT unit_id FROM {INFLIGHT_TABLE}
        WHERE status = 'done' AND updated_at < now() - make_interval(secs => :keep) LIMIT 500)
""")


@dataclass(frozen=True, slots=True)
class InFlightUnit:
    """One unit of work as the store knows it.

    ``key`` names the work (a caller's job id, or the LangGraph thread); ``thread_id`` and
    ``checkpoint_ns`` say where a LangGraph checkpointer keeps its progress; ``payload`` is
    whatever the caller needs to start it again (JSON).
    """

    unit_id: str
    key: str
    status: str
    tenant_id: str | None = None
    thread_id: str | None = None
    run_id: str | None = None
    checkpoint_ns: str | None = None
    payload: Any = None
    tags: dict[str, Any] = field(default_factory=dict)
    owner_host: str | None = None
    owner_pid: int | None = None
    started_at: datetime | None = None
    reason: str | None = None
    elapsed_s: float | None = None
    claims: int = 0


@dataclass(frozen=True, slots=True)
class ResumeReport:
    """What ``resume`` did, by unit id: units it claimed and finished, claimed and failed
    (interrupted again, for a later try), and found already claimed by another process; and
    what each resumed unit's function returned."""

    resumed: tuple[str, ...]
    failed: tuple[str, ...]
    taken: tuple[str, ...]
    results: dict[str, Any] = field(default_factory=dict)


def _json(value: Any) -> Any:
    return value if not isinstance(value, str) else json.loads(value)


def _unit(row: Any) -> InFlightUnit:
    return InFlightUnit(
        unit_id=row.unit_id,
        key=row.key,
        status=row.status,
        tenant_id=row.tenant_id,
        thread_id=row.thread_id,
        run_id=row.run_id,
        checkpoint_ns=row.checkpoint_ns,
        payload=_json(row.payload),
        tags=dict(_json(row.tags) or {}),
        owner_host=row.owner_host,
        owner_pid=row.owner_pid,
        started_at=row.started_at,
        reason=row.reason,
        elapsed_s=None if row.elapsed_s is None else float(row.elapsed_s),
        claims=int(row.claims),
    )


def host_identity() -> str:
    """This host as pids are meaningful on it: the host name, the pid namespace and the boot.

    Two containers sharing the host's name (``network_mode: host``) but not its pids, or the
    same host after a reboot, are different "hosts" here, so a pid is only ever checked where
    it means the same process; elsewhere the lease decides.
    """
    try:
        namespace = "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit())
    except OSError:
        namespace = ""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip().replace("-", "")[:8]
    except OSError:
        boot = ""
    name = socket.gethostname().replace(":", "_")
    return "~".join(part for part in (name, namespace, boot) if part)


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where unknown: with
    the pid, it tells a live owner from a new process that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19] if len(fields) > 19 else ""


def _process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def owner_alive(owner: str, pid: int) -> bool:
    """Whether the process that wrote ``owner`` (``host:pid:start``) still runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if _process_state(pid) in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    started = owner.rsplit(":", 2)[-1] if owner.count(":") >= 2 else ""
    now = _start_ticks(pid)
    return not (started and now and started != now)  # same pid, another process: gone


class InFlightLog:
    """The store's record of this process's units of work in flight (see module).

    Args:
        store: the shared ``Store`` (rows live in ``graphthrift_inflight``).
        ledger: books each unit marked interrupted as one ``kind="interrupted"`` row with its
            tags (fail open: a ledger that refuses is counted and logged).
        lease_s: seconds a running unit's owner is trusted without a sign of life. A
            background thread renews the leases of this process's units every third of it;
            a unit whose lease lapsed (an owner on another host that died) is interrupted.
        keep_s: seconds a finished unit's row is kept before it is purged.

    A store that is down never stops the work: ``start`` returns None (the unit runs
    unrecorded), and each failure is counted as ``inflight_store_failure``.
    """

    def __init__(
        self,
        store: Store,
        *,
        ledger: Ledger | None = None,
        lease_s: float = 300.0,
        keep_s: float = 86_400.0,
    ) -> None:
        for name, value in (("lease_s", lease_s), ("keep_s", keep_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.store = store
        self.ledger = ledger
        self.lease_s = lease_s
        self.keep_s = keep_s
        self.host = host_identity()
        self._lock = threading.Lock()
        self._mine: set[str] = set()
        self._finished = 0
        self._owner_pid = -1
        self._owner = ""
        self._heartbeat: threading.Thread | None = None
        self._wake = threading.Event()

    @property
    def owner(self) -> str:
        """This process, as ``host:pid:start`` (recomputed after a fork)."""
        pid = os.getpid()
        if pid != self._owner_pid:
            self._owner = f"{self.host}:{pid}:{_start_ticks(pid)}"
            self._owner_pid = pid
        return self._owner

    def _failed(self, what: str, exc: BaseException) -> None:
        diagnostics.count(
            "inflight_store_failure",
            "graphthrift graceful restart: could not %s (%s)",
            what,
            exc,
        )

    # -- this process's units -------------------------------------------------------------

    def start(
        self,
        key: str,
        *,
        tenant_id: str | None = None,
        thread_id: str | None = None,
        run_id: str | None = None,
        checkpoint_ns: str | None = None,
        payload: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> InFlightUnit | None:
        """Record a unit as running; None if the store could not record it."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"an in-flight unit needs a non-empty string key, got {key!r}")
        try:
            payload_json = json.dumps(payload)
            tags_json = json.dumps(dict(tags or {}), default=str)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"the payload of in-flight unit {key!r} must be JSON-serializable: {exc}"
            ) from exc
        unit_id = uuid.uuid4().hex
        try:
            with self.store.connect() as conn:
                conn.execute(
                    _START,
                    {
                        "id": unit_id,
                        "key": key,
                        "tenant": tenant_id,
                        "thread": thread_id,
                        "run": run_id,
                        "ns": checkpoint_ns,
                        "payload": payload_json,
                        "tags": tags_json,
                        "owner": self.owner,
                        "host": self.host,
                        "pid": os.getpid(),
                        "lease": self.lease_s,
                    },
                )
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._failed(f"record unit {key!r}; it runs unrecorded", exc)
            return None
        with self._lock:
            self._mine.add(unit_id)
        self._ensure_heartbeat()
        return InFlightUnit(
            unit_id=unit_id,
            key=key,
            status=RUNNING,
            tenant_id=tenant_id,
            thread_id=thread_id,
            run_id=run_id,
            checkpoint_ns=checkpoint_ns,
            payload=payload,
            tags=dict(tags or {}),
            owner_host=self.host,
            owner_pid=os.getpid(),
        )

    def finish(self, unit: InFlightUnit) -> None:
        """The unit is done (it finished, or its resume did): nothing is left to resume."""
        with self._lock:
            self._mine.discard(unit.unit_id)
            self._finished += 1
            purge = self._finished % 200 == 0
        try:
            with self.store.connect() as conn:
                conn.execute(_DONE, {"id": unit.unit_id, "owner": self.owner})
                if purge:
                    conn.execute(_PURGE, {"keep": self.keep_s})
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._failed(f"mark unit {unit.key!r} done", exc)

    def interrupt(self, units: Iterable[InFlightUnit], reason: str) -> list[InFlightUnit]:
        """Mark this process's units interrupted (a drain ran out of time) and book them."""
        ids = [u.unit_id for u in units]
        if not ids:
            return []
        with self._lock:
            self._mine.difference_update(ids)
        try:
            with self.store.connect() as conn:
                rows = conn.execute(
                    _INTERRUPT, {"ids": ids, "owner": self.owner, "reason": reason}
                ).all()
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._failed(f"mark {len(ids)} units interrupted", exc)
            return []
        marked = [_unit(row) for row in rows]
        self._book(marked)
        return marked

    def renew(self) -> None:
        """Extend the leases of this process's units (the heartbeat calls it)."""
        try:
            with self.store.connect() as conn:
                conn.execute(_RENEW, {"owner": self.owner, "lease": self.lease_s})
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._failed("renew the leases of the units in flight", exc)

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return
            self._heartbeat = threading.Thread(
                target=self._beat, name="graphthrift-inflight-lease", daemon=True
            )
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._wake.wait(self.lease_s / 3):
            with self._lock:
                if not self._mine:
                    self._heartbeat = None
                    return
            self.renew()

    # -- what other processes left behind -------------------------------------------------

    def reap(self) -> list[InFlightUnit]:
        """Mark interrupted the units whose owner is gone (its pid no longer runs on this
        host, or its lease lapsed), and book them. Each is marked by one process only."""
        me = self.owner
        try:
            with self.store.connect() as conn:
                suspects = conn.execute(_SUSPECTS, {"host": self.host}).all()
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._failed("look for units left by dead processes", exc)
            return []
        dead: list[tuple[Any, str]] = []
        for row in suspects:
            if row.owner == me:
                continue
            if row.owner_host == self.host and not owner_alive(row.owner, row.owner_pid):
                reason = f"owner process {row.owner_pid} on {row.owner_host} is gone"
            elif row.lapsed:
                reason = f"lease lapsed (owner process {row.owner_pid} on {row.owner_host})"
            else:
                continue
            dead.append((row, reason))
        reaped: list[InFlightUnit] = []
        if dead:
            try:
                with self.store.connect() as conn:
                    for row, reason in dead:
                        got = conn.execute(
                            _REAP,
                            {
                                "id": row.unit_id,
                                "owner": row.owner,
                                "status": row.status,
                                "reason": reason,
                            },
                        ).first()
                        if got is not None:
                            reaped.append(_unit(got))
            except (SQLAlchemyError, StoreUnavailable) as exc:
                self._failed("mark units of dead processes interrupted", exc)
                return []
        self._book(reaped)
        return reaped

    def interrupted(self, *, tenant_id: str | None = None, limit: int = 100) -> list[InFlightUnit]:
        """Units waiting to be resumed (oldest first), after reaping dead owners' units."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.reap()
        try:
            with self.store.connect() as conn:
                rows = conn.execute(_LIST, {"tenant": tenant_id, "limit": limit}).all()
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._failed("list interrupted units", exc)
            return []
        return [_unit(row) for row in rows]

    def get(self, unit_id: str) -> InFlightUnit | None:
        """The unit as the store has it now (None if unknown or purged)."""
        with self.store.connect() as conn:
            row = conn.execute(_GET, {"id": unit_id}).first()
        return None if row is None else _unit(row)

    def claim(self, unit: InFlightUnit | str) -> InFlightUnit | None:
        """Take an interrupted unit for this process; None if another process took it."""
        unit_id = unit if isinstance(unit, str) else unit.unit_id
        with self.store.connect() as conn:
            row = conn.execute(
                _CLAIM,
                {
                    "id": unit_id,
                    "owner": self.owner,
                    "host": self.host,
                    "pid": os.getpid(),
                    "lease": self.lease_s,
                },
            ).first()
        if row is None:
            return None
        with self._lock:
            self._mine.add(unit_id)
        self._ensure_heartbeat()
        return _unit(row)

    def resume(
        self,
        fn: Callable[[InFlightUnit], Any],
        *,
        tenant_id: str | None = None,
        where: Callable[[InFlightUnit], bool] | None = None,
        limit: int = 100,
        stop: Callable[[], bool] | None = None,
    ) -> ResumeReport:
        """Claim each interrupted unit (that ``where`` accepts) and run ``fn(unit)``; a unit
        whose ``fn`` raises is interrupted again (reason: the error) for a later try. Once
        ``stop()`` is true no further unit is claimed (the process began to drain)."""
        resumed: list[str] = []
        failed: list[str] = []
        taken: list[str] = []
        results: dict[str, Any] = {}
        for unit in self.interrupted(tenant_id=tenant_id, limit=limit):
            if stop is not None and stop():
                break
            if where is not None and not where(unit):
                continue
            try:
                mine = self.claim(unit)
            except (SQLAlchemyError, StoreUnavailable) as exc:
                self._failed("claim an interrupted unit; it stays for a later resume", exc)
                break
            if mine is None:
                taken.append(unit.unit_id)
                continue
            try:
                results[mine.unit_id] = fn(mine)
            except Exception as exc:
                self.interrupt([mine], _resume_failed(mine, exc))
                failed.append(mine.unit_id)
                continue
            self.finish(mine)
            resumed.append(mine.unit_id)
        return ResumeReport(tuple(resumed), tuple(failed), tuple(taken), results)

    async def aresume(
        self,
        fn: Callable[[InFlightUnit], Awaitable[Any]],
        *,
        tenant_id: str | None = None,
        where: Callable[[InFlightUnit], bool] | None = None,
        limit: int = 100,
        stop: Callable[[], bool] | None = None,
    ) -> ResumeReport:
        """``resume`` for coroutines (the store calls run in a worker thread)."""
        resumed: list[str] = []
        failed: list[str] = []
        taken: list[str] = []
        results: dict[str, Any] = {}
        for unit in await asyncio.to_thread(self.interrupted, tenant_id=tenant_id, limit=limit):
            if stop is not None and stop():
                break
            if where is not None and not where(unit):
                continue
            try:
                mine = await asyncio.to_thread(self.claim, unit)
            except (SQLAlchemyError, StoreUnavailable) as exc:
                self._failed("claim an interrupted unit; it stays for a later resume", exc)
                break
            if mine is None:
                taken.append(unit.unit_id)
                continue
            try:
                results[mine.unit_id] = await fn(mine)
            except Exception as exc:
                await asyncio.to_thread(self.interrupt, [mine], _resume_failed(mine, exc))
                failed.append(mine.unit_id)
                continue
            await asyncio.to_thread(self.finish, mine)
            resumed.append(mine.unit_id)
        return ResumeReport(tuple(resumed), tuple(failed), tuple(taken), results)

    # -- the ledger -----------------------------------------------------------------------

    def _book(self, units: Iterable[InFlightUnit]) -> None:
        """One ``kind="interrupted"`` ledger row per unit, so reports can count them."""
        if self.ledger is None:
            return
        for unit in units:
            tags = {**unit.tags}
            for name, value in (
                ("tenant_id", unit.tenant_id),
                ("thread_id", unit.thread_id),
                ("run_id", unit.run_id),
            ):
                if value is not None:
                    tags[name] = value
            record = LedgerRecord(
                kind=INTERRUPTED,
                layer=LAYER,
                cost_usd=0.0,
                usage_source="none",
                success=False,
                extra={
                    "unit_id": unit.unit_id,
                    "key": unit.key,
                    "reason": unit.reason,
                    "elapsed_s": unit.elapsed_s,
                    "owner": f"{unit.owner_host}:{unit.owner_pid}",
                },
            )
            for name in TAG_FIELDS:
                if tags.get(name) is not None:
                    setattr(record, name, str(tags[name]))
            try:
                self.ledger.record(record)
            except Exception as exc:  # a closed ledger: the unit stays marked, unbooked
                diagnostics.count(
                    "inflight_unbooked",
                    "graphthrift graceful restart: the ledger refused the interrupted row of"
                    " unit %r (%r)",
                    unit.key,
                    exc,
                )


def _resume_failed(unit: InFlightUnit, exc: Exception) -> str:
    """Count and log a resume that raised; the reason its unit is interrupted again."""
    diagnostics.count(
        "inflight_resume_failed",
        "graphthrift graceful restart: resuming unit %r failed (%r); it stays interrupted",
        unit.key,
        exc,
    )
    return f"resume failed: {type(exc).__name__}: {exc}"[:500]
