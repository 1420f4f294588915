"""Moved to :mod:`graphthrift.embed.static`; this path stays for one minor version."""

import warnings

from graphthrift.embed.static import *  # noqa: F403

warnings.warn(
    "graphthrift.static_embed moved to graphthrift.embed.static", DeprecationWarning, stacklevel=2
)
