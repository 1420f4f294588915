"""Moved to :mod:`graphthrift.text.messages`; this path stays for one minor version."""

import warnings

from graphthrift.text.messages import *  # noqa: F403

warnings.warn(
    "graphthrift.messages moved to graphthrift.text.messages", DeprecationWarning, stacklevel=2
)
