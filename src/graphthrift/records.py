"""Moved to :mod:`graphthrift.ledger.records`; this path stays for one minor version."""

import warnings

from graphthrift.ledger.records import *  # noqa: F403

warnings.warn(
    "graphthrift.records moved to graphthrift.ledger.records", DeprecationWarning, stacklevel=2
)
