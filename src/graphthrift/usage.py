"""Moved to :mod:`graphthrift.ledger.usage`; this path stays for one minor version."""

import warnings

from graphthrift.ledger.usage import *  # noqa: F403

warnings.warn(
    "graphthrift.usage moved to graphthrift.ledger.usage", DeprecationWarning, stacklevel=2
)
