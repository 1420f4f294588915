"""Moved to :mod:`graphthrift.ledger.metrics`; this path stays for one minor version."""

import warnings

from graphthrift.ledger.metrics import *  # noqa: F403

warnings.warn(
    "graphthrift.metrics moved to graphthrift.ledger.metrics", DeprecationWarning, stacklevel=2
)
