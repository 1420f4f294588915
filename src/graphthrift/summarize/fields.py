"""The ``key=value`` fields of a tool result (JSON, ``key=value`` or ``Key: value`` lines).

A summary that keeps "A-101; 00340434161094042557" but not ``status=shipped`` or
``eta=June 3`` has lost what the tool was called for (issue 11.6): fields are kept with
their keys, and each belongs to the record (its id) it describes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELD_ITEM", "IDENT", "Field", "record_subject", "tool_fields"]

IDENT = re.compile(
    r"\b(?=[\w-]*[A-Za-z])(?=[\w-]*\d)[\w-]{3,}\b|[\w.+-]+@[\w-]+\.[\w.]+|https?://\S+|#\w+"
)


@dataclass(frozen=True, slots=True)
class Field:
    """A ``key=value`` field of a tool result: the key kept, the value an exact slice.

    ``slot`` names what a later value of it supersedes (the key, with the list position of
    the value), and ``subject`` the record it belongs to (its id), so that the status of
    order A-101 never supersedes the status of order A-102.
    """

    key: str
    value: str
    slot: str

    @property
    def text(self) -> str:
        return f"{self.key}={self.value}"


def _flatten_json(value: Any, path: str = "", slot: str = "") -> list[Field]:
    """The leaves of a JSON value as fields keyed by their path (``customer.name``)."""
    if isinstance(value, Mapping):
        out: list[Field] = []
        for k, v in value.items():
            key = f"{path}.{k}" if path else str(k)
            out.extend(_flatten_json(v, key, f"{slot}.{k}" if slot else str(k)))
        return out
    if isinstance(value, list):
        return [
            item
            for i, v in enumerate(value[:50])
            for item in _flatten_json(v, path, f"{slot}[{i}]")
        ]
    if value is None or value == "":
        return []
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return [Field(path or "value", text, slot or "value")]


_FIELD_KEY = r"[A-Za-z_][\w.-]{0,40}"
# key=value, the value running to a separator or to the next key=
_EQ_FIELD = re.compile(
    rf"(?<![\w.-])({_FIELD_KEY})[ \t]*=[ \t]*"
    rf"(\"[^\"\n]*\"|'[^'\n]*'|[^,;|&\n]*?)[ \t]*(?=[,;|&\n]|\s+{_FIELD_KEY}[ \t]*=|$)"
)
# Key: value, one to four words of key at the start of a line or after | ; or a comma
_COLON_FIELD = re.compile(
    r"(?:^|(?<=[\n|;,]))[ \t]*([A-Za-z][A-Za-z0-9_./-]*(?: [A-Za-z0-9_./-]+){0,3})[ \t]*:[ \t]+"
    r"([^\n|;]+?)[ \t]*(?=$|[\n|;]|,[ \t]*[A-Za-z][A-Za-z0-9_./-]*(?: [A-Za-z0-9_./-]+){0,3}[ \t]*:[ \t])",
    re.MULTILINE,
)


def _norm_key(key: str) -> str:
    return re.sub(r"[\s-]+", "_", key.strip()).lower()


def _clean_value(value: str) -> str:
    value = value.strip()
    if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value.rstrip(".,").strip()


def tool_fields(text: str) -> tuple[list[Field], str]:
    """The key/value fields of a tool result (JSON, ``key=value`` or ``Key: value`` lines),
    and the text left once they are taken out.

    A summary that keeps "A-101; 00340434161094042557" but not ``status=shipped`` or
    ``eta=June 3`` has lost what the tool was called for (issue 11.6): fields are kept
    with their keys.
    """
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            return _flatten_json(json.loads(stripped)), ""
        except ValueError:
            pass
    fields: list[tuple[int, Field]] = []
    rest = text
    for pattern in (_EQ_FIELD, _COLON_FIELD):
        found = []
        for m in pattern.finditer(rest):
            value = _clean_value(m.group(2))
            if value:
                key = _norm_key(m.group(1))
                found.append((m.start(), Field(key, value, key)))
        if found:
            fields.extend(found)
            rest = pattern.sub(lambda m: "\n" if _clean_value(m.group(2)) else m.group(0), rest)
    fields.sort(key=lambda f: f[0])
    return [f for _, f in fields], rest


def record_subject(fields: Sequence[Field], text: str) -> str:
    """The record a tool result is about: an id field, else the first identifier."""
    for f in fields:
        if (f.key == "id" or f.key.endswith(("_id", ".id"))) and len(f.value) < 64:
            return f.value.lower()
    for f in fields:
        if IDENT.fullmatch(f.value):
            return f.value.lower()
    m = IDENT.search(text)
    return m.group(0).lower() if m else ""


FIELD_ITEM = re.compile(r"^([a-z_][\w.\[\]-]{0,60})=(.+)$", re.DOTALL)
