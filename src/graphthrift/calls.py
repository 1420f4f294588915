"""Moved to :mod:`graphthrift.ledger.calls`; this path stays for one minor version."""

import warnings

from graphthrift.ledger.calls import *  # noqa: F403

warnings.warn(
    "graphthrift.calls moved to graphthrift.ledger.calls", DeprecationWarning, stacklevel=2
)
