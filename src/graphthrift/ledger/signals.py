"""A stopped process (docker stop, Kubernetes, Ctrl-C) spills what its ledgers could not write.

SIGTERM and SIGINT flush and spill every open ledger before the previous handler runs; at a
normal exit each ledger is closed (flushed, the rest spilled).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphthrift.ledger.ledger import Ledger

logger = logging.getLogger("graphthrift.ledger")

_live_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_previous_handlers: dict[int, Any] = {}
_SIGNAL_FLUSH_SECONDS = 2.0
_signalled = False  # once a stop signal was handled, exit hooks wait less for the database


def _install_signal_handlers() -> None:
    """Handle SIGTERM and SIGINT once per process, chaining to the handlers found.

    Python only lets the main thread install signal handlers, so a ledger first created in
    another thread installs none (and logs it); ``atexit`` still spills at a normal exit.
    A handler installed later by the application replaces ours; it should call
    ``Ledger.spill_now()`` itself, or chain to the handler it found, as ours does.
    """
    if _previous_handlers:
        return
    if threading.current_thread() is not threading.main_thread():
        logger.info(
            "graphthrift: ledger created outside the main thread; SIGTERM/SIGINT not handled"
        )
        return
    for signum in _SIGNALS:
        try:
            _previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_signal)
        except (ValueError, OSError) as exc:  # pragma: no cover - embedded interpreters
            logger.info("graphthrift: cannot handle signal %s (%s)", signum, exc)


def _on_signal(signum: int, frame: Any) -> None:
    """Flush and spill every open ledger, then do what the previous handler would have."""
    global _signalled
    _signalled = True
    for ledger in list(_live_ledgers):
        try:
            ledger.spill_now(_SIGNAL_FLUSH_SECONDS)
        except Exception:  # the signal must still reach the previous handler
            logger.exception("graphthrift: spilling a ledger on signal %s failed", signum)
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN (or None: a handler not set from Python): the signal is ignored, as before


def _close_at_exit(ref: weakref.ReferenceType[Ledger]) -> None:
    """Flush a ledger at interpreter exit; spill what the database refuses."""
    ledger = ref()
    if ledger is None:
        return
    try:
        ledger.close(timeout=1.0 if _signalled else 5.0)
    except Exception:  # pragma: no cover - the exit path must not raise
        logger.exception("graphthrift: closing a ledger at exit failed")
