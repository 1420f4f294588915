"""Process-wide counters for the things graphthrift tolerates instead of raising.

Failing open is only honest if it is visible: every warning, fallback and backend failure
increments a named counter here and is logged once per occurrence at WARNING level.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

logger = logging.getLogger("graphthrift")

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def count(name: str, message: str | None = None, *args: object) -> None:
    """Increment counter ``name`` and, when ``message`` is given, log it as a warning."""
    with _lock:
        _counts[name] += 1
    if message is not None:
        logger.warning(message, *args)


def counters() -> dict[str, int]:
    """A snapshot of every counter."""
    with _lock:
        return dict(_counts)


def get(name: str) -> int:
    """The current value of one counter (0 if it never fired)."""
    with _lock:
        return _counts[name]


def reset() -> None:
    """Zero every counter (for tests and benchmarks)."""
    with _lock:
        _counts.clear()
