"""Idempotent tools: a side-effecting tool runs at most once per key.

An agent that is resumed, replayed from a checkpoint, or restarted after a crash runs its
tool calls again: a second payment, a second email. ``ToolIdempotency`` claims the call's key
in ``graphthrift_tool_claims`` before running it, stores the result after, and returns the
stored result to every repeat within ``ttl_s``. The key is explicit (an idempotency key the
caller or the model passes), or derived from (thread, tool, canonical arguments), so a replay
of the same call in the same thread finds it. Keys are scoped by tenant.

A claim holds a lease: a repeat that finds the call still running waits for its result (up to
``wait_timeout``, then ``ToolCallInProgress``); a claim whose lease lapsed (its process
crashed) is taken over. A tool that raises releases its claim, so it can be tried again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from graphthrift import diagnostics
from graphthrift.errors import StoreUnavailable, ToolCallInProgress
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import LedgerRecord
from graphthrift.resilience._flight import JSON_CODEC, Codec
from graphthrift.resilience.schema import TOOL_CLAIMS_TABLE
from graphthrift.store.postgres import Store

T = TypeVar("T")

__all__ = ["ToolIdempotency", "derive_tool_key"]

_CLAIM = text(f"""
    INSERT INTO {TOOL_CLAIMS_TABLE} AS c
        (key_hash, tenant_id, tool, status, owner, lease_until, created_at, expires_at)
    VALUES (:key, :tenant, :tool, 'running', :owner, now() + make_interval(secs => :lease),
            now(), now() + make_interval(secs => :ttl))
    ON CONFLICT (key_hash) DO UPDATE SET
        status = 'running', owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until,
        created_at = now(), expires_at = EXCLUDED.expires_at, result = NULL
    WHERE (c.status = 'running' AND c.lease_until < now()) OR c.expires_at < now()
    RETURNING owner
""")
_READ = text(f"""
    SELECT status, result, EXTRACT(EPOCH FROM (lease_until - now())) AS lease_left
    FROM {TOOL_CLAIMS_TABLE} WHERE key_hash = :key AND expires_at > now()
""")
_DONE = text(f"""
    UPDATE {TOOL_CLAIMS_TABLE} SET status = 'done', result = CAST(:result AS jsonb),
        expires_at = now() + make_interval(secs => :ttl)
    WHERE key_hash = :key AND owner = :owner
    RETURNING 1
""")
_RELEASE = text(f"DELETE FROM {TOOL_CLAIMS_TABLE} WHERE key_hash = :key AND owner = :owner")
_PURGE = text(f"""
    DELETE FROM {TOOL_CLAIMS_TABLE} WHERE key_hash IN (
        SELECT key_hash FROM {TOOL_CLAIMS_TABLE} WHERE expires_at < now() LIMIT 500)
""")


def derive_tool_key(thread_id: str | None, tool: str, args: Any) -> str:
    """The key of a tool call without an explicit one: its thread, tool and canonical
    arguments (keys sorted, so argument order never matters)."""
    raw = json.dumps([thread_id, tool, args], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


class ToolIdempotency:
    """At most one run per idempotency key; the stored result on every repeat.

    Args:
        store: the shared ``Store`` (claims live in ``graphthrift_tool_claims``).
        ledger: books each repeat served from the store as ``kind="dedup"``,
            ``layer="idempotent_tool"``.
        ttl_s: seconds a finished call's result is returned to repeats (one day).
        lease_s: seconds a running claim is honoured; past it, the claim is taken over
            (its holder is presumed dead). Set it above the tool's longest run.
        wait_timeout: seconds a repeat waits for a running call before ``ToolCallInProgress``.
        poll_interval: seconds between checks of a running claim.
        codec: turns results to JSON and back.
        fail_closed: when the store is down, refuse (raise ``StoreUnavailable``) instead of
            running the tool unguarded (the default runs it, counted and logged).

    Example:
        >>> guard = ToolIdempotency(store)
        >>> receipt = guard.run("pay-invoice-118", lambda: pay(118), tool="pay",
        ...                     tenant_id="acme")
    """

    layer = "idempotent_tool"

    def __init__(
        self,
        store: Store,
        *,
        ledger: Ledger | None = None,
        ttl_s: float = 86_400.0,
        lease_s: float = 300.0,
        wait_timeout: float = 60.0,
        poll_interval: float = 0.1,
        codec: Codec = JSON_CODEC,
        fail_closed: bool = False,
    ) -> None:
        for name, value in (
            ("ttl_s", ttl_s),
            ("lease_s", lease_s),
            ("wait_timeout", wait_timeout),
            ("poll_interval", poll_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.store = store
        self.ledger = ledger
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.codec = codec
        self.fail_closed = fail_closed
        self.runs = 0
        self.repeats = 0
        self._claims = 0

    @staticmethod
    def _hash(key: str, tenant_id: str | None) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"an idempotency key must be a non-empty string, got {key!r}")
        raw = json.dumps([tenant_id, key], separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()

    # -- one step each, shared by run and arun ------------------------------------------------

    def _claim(self, digest: str, tool: str, tenant_id: str | None, owner: str) -> Any:
        """``("claimed", None)``, ``("done", value)`` or ``("running", lease_left_s)``."""
        with self.store.connect() as conn:
            params = {
                "key": digest,
                "tenant": tenant_id,
                "tool": tool,
                "owner": owner,
                "lease": self.lease_s,
                "ttl": self.ttl_s,
            }
            if conn.execute(_CLAIM, params).first() is not None:
                return "claimed", None
            row = conn.execute(_READ, {"key": digest}).first()
        if row is None:  # released or purged between the two statements: try again
            return "running", 0.0
        if row.status == "done":
            result = row.result if not isinstance(row.result, str) else json.loads(row.result)
            return "done", self.codec.decode(result["value"])
        return "running", float(row.lease_left or 0.0)

    def _finish(self, digest: str, owner: str, value: Any) -> None:
        try:
            result = json.dumps({"value": self.codec.encode(value)})
        except (TypeError, ValueError) as exc:
            diagnostics.count(
                "idempotent_tool_unencodable",
                "graphthrift idempotent tool: the result could not be stored (%s); pass a codec",
                exc,
            )
            self._release(digest, owner)
            return
        try:
            with self.store.connect() as conn:
                done = conn.execute(
                    _DONE, {"key": digest, "owner": owner, "result": result, "ttl": self.ttl_s}
                ).first()
                self._claims += 1
                if self._claims % 200 == 0:
                    conn.execute(_PURGE)
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._store_failed(exc)
            return
        if done is None:
            diagnostics.count(
                "idempotent_tool_lease_lost",
                "graphthrift idempotent tool: the call outran its %.0fs lease and was taken "
                "over; raise lease_s above the tool's longest run",
                self.lease_s,
            )

    def _release(self, digest: str, owner: str) -> None:
        try:
            with self.store.connect() as conn:
                conn.execute(_RELEASE, {"key": digest, "owner": owner})
        except (SQLAlchemyError, StoreUnavailable) as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: BaseException) -> None:
        diagnostics.count(
            "idempotent_tool_store_failure",
            "graphthrift idempotent tool: store unavailable (%s)",
            exc,
        )

    def _repeat(self, tool: str, key: str, tenant_id: str | None, tags: Mapping[str, Any]) -> None:
        self.repeats += 1
        diagnostics.count("idempotent_tool_repeat")
        if self.ledger is not None:
            self.ledger.record(
                LedgerRecord(
                    kind="dedup",
                    layer=self.layer,
                    tenant_id=tenant_id,
                    thread_id=None if tags.get("thread_id") is None else str(tags["thread_id"]),
                    run_id=None if tags.get("run_id") is None else str(tags["run_id"]),
                    node=None if tags.get("node") is None else str(tags["node"]),
                    cost_usd=0.0,
                    usage_source="none",
                    extra={"tool": tool, "key": key},
                )
            )

    def _step(self, digest: str, tool: str, tenant_id: str | None, owner: str) -> Any:
        try:
            return self._claim(digest, tool, tenant_id, owner)
        except (SQLAlchemyError, StoreUnavailable) as exc:
            if self.fail_closed:
                raise
            self._store_failed(exc)
            return "unguarded", None

    # -- the public calls -----------------------------------------------------------------------

    def run(
        self,
        key: str,
        fn: Callable[[], T],
        *,
        tool: str,
        tenant_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> T:
        """``fn()`` if no call with ``key`` ran or runs; else the stored result."""
        digest = self._hash(key, tenant_id)
        owner = uuid.uuid4().hex
        started = time.monotonic()
        while True:
            state, payload = self._step(digest, tool, tenant_id, owner)
            if state == "done":
                self._repeat(tool, key, tenant_id, tags or {})
                return payload  # type: ignore[no-any-return]
            if state in ("claimed", "unguarded"):
                break
            waited = time.monotonic() - started
            if waited >= self.wait_timeout:
                raise ToolCallInProgress(tool, key, waited, payload)
            time.sleep(self.poll_interval)
        self.runs += 1
        try:
            value = fn()
        except BaseException:
            if state == "claimed":
                self._release(digest, owner)
            raise
        if state == "claimed":
            self._finish(digest, owner, value)
        return value

    async def arun(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        *,
        tool: str,
        tenant_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> T:
        """``run`` for coroutines (the store calls run in a worker thread)."""
        digest = self._hash(key, tenant_id)
        owner = uuid.uuid4().hex
        started = time.monotonic()
        while True:
            state, payload = await asyncio.to_thread(self._step, digest, tool, tenant_id, owner)
            if state == "done":
                self._repeat(tool, key, tenant_id, tags or {})
                return payload  # type: ignore[no-any-return]
            if state in ("claimed", "unguarded"):
                break
            waited = time.monotonic() - started
            if waited >= self.wait_timeout:
                raise ToolCallInProgress(tool, key, waited, payload)
            await asyncio.sleep(self.poll_interval)
        self.runs += 1
        try:
            value = await fn()
        except BaseException:
            if state == "claimed":
                await asyncio.to_thread(self._release, digest, owner)
            raise
        if state == "claimed":
            await asyncio.to_thread(self._finish, digest, owner, value)
        return value
