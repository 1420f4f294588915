"""Moved to :mod:`graphthrift.compress.lingua`; this path stays for one minor version."""

import warnings

from graphthrift.compress.lingua import *  # noqa: F403

warnings.warn(
    "graphthrift.lingua moved to graphthrift.compress.lingua", DeprecationWarning, stacklevel=2
)
