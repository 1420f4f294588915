"""What the declared node states share."""

from __future__ import annotations

from typing import Any

__all__ = ["latest"]


def latest(_old: Any, new: Any) -> Any:
    """Reducer of a key a node replaces whole: the last write wins.

    A key declared with a reducer has a value from a graph's first step, so a node can tell a
    state built on its schema from a plain ``MessagesState`` (where LangGraph would drop its
    writes without a word) and raise ``StateSchemaError`` instead.
    """
    return new
