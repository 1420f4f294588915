"""Moved to :mod:`graphthrift.text.tokens`; this path stays for one minor version."""

import warnings

from graphthrift.text.tokens import *  # noqa: F403

warnings.warn(
    "graphthrift.tokens moved to graphthrift.text.tokens", DeprecationWarning, stacklevel=2
)
