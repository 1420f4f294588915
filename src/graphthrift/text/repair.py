"""One repair for text that PostgreSQL, a tokenizer or a UTF-8 file would refuse.

A NUL byte or a lone surrogate (``"\\ud800"``, as produced by ``surrogateescape`` decoding or a
JSON ``\\ud800`` escape) is legal in a Python ``str`` but not in PostgreSQL ``text`` or
``jsonb``, nor in UTF-8. One such character in a tag would fail a whole ``COPY`` batch of
ledger rows, and in a prompt it makes the embedder raise. Every layer that stores, files or
tokenizes user text calls ``clean_text`` first, so bad text is repaired the same way
everywhere and counted (``text_repaired`` in ``graphthrift.diagnostics``), never raised.

Example:
    >>> clean_text("acme\\x00", "tenant_id")
    'acme'
    >>> clean_text("caf\\udce9", "model")
    'caf\\ufffd'
"""

from __future__ import annotations

import math
import re
from typing import Any

from graphthrift import diagnostics

__all__ = ["REPLACEMENT", "clean_json", "clean_text", "needs_repair"]

REPLACEMENT = "\ufffd"
_BAD = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 32


def needs_repair(value: str) -> bool:
    """Whether ``value`` holds a NUL byte or a surrogate code point."""
    return _BAD.search(value) is not None


def clean_text(value: str, field: str) -> str:
    """``value`` with NUL bytes removed and lone surrogates replaced by U+FFFD.

    A surrogate pair split into two code points (``"\\ud83d\\ude00"``) is joined back into
    its character first. Clean text is returned as is, at the cost of one regex scan.

    Raises:
        TypeError: ``value`` is not a ``str`` (naming ``field``).
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if _BAD.search(value) is None:
        return value
    repaired = value.replace("\x00", "")
    if _SURROGATE.search(repaired) is not None:
        # join pairs that arrived as two code points, then replace what is still alone
        repaired = repaired.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    diagnostics.count(
        "text_repaired",
        "graphthrift: %s held NUL bytes or lone surrogates; they were removed or replaced by"
        " U+FFFD (%d characters before, %d after)",
        field,
        len(value),
        len(repaired),
    )
    return repaired


def clean_json(value: Any, field: str) -> Any:
    """``value`` as plain JSON data that PostgreSQL ``jsonb`` accepts, repaired and counted.

    Strings go through ``clean_text``; dict keys become strings; tuples and sets become
    lists; NaN and infinities, and any object JSON cannot hold (a datetime, a Decimal, a
    custom class), become their ``str``, counted as ``json_repaired``. Nesting deeper than
    32 levels (or a cycle) is cut to its ``str``.
    """
    return _clean_json(value, field, 0)


def _clean_json(value: Any, field: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return clean_text(value, field)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return _as_text(value, field, "is not a finite number")
    if depth >= _MAX_DEPTH:
        return _as_text(value, field, "is nested too deeply")
    if isinstance(value, dict):
        return {
            clean_text(k if isinstance(k, str) else str(k), f"{field} key"): _clean_json(
                v, f"{field}.{k}", depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean_json(v, field, depth + 1) for v in value]
    return _as_text(value, field, f"is a {type(value).__name__}, not JSON")


def _as_text(value: Any, field: str, why: str) -> str:
    try:
        shown = str(value)
    except Exception:  # a __str__ that raises must not lose the record
        shown = f"<unprintable {type(value).__name__}>"
    diagnostics.count(
        "json_repaired", "graphthrift: a value in %s %s; it was stored as text", field, why
    )
    return clean_text(shown, field)
