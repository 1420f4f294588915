"""Moved to :mod:`graphthrift.ledger.otel`; this path stays for one minor version."""

import warnings

from graphthrift.ledger.otel import *  # noqa: F403

warnings.warn("graphthrift.otel moved to graphthrift.ledger.otel", DeprecationWarning, stacklevel=2)
