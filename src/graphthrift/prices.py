"""Moved to :mod:`graphthrift.ledger.prices`; this path stays for one minor version."""

import warnings

from graphthrift.ledger.prices import *  # noqa: F403

warnings.warn(
    "graphthrift.prices moved to graphthrift.ledger.prices", DeprecationWarning, stacklevel=2
)
