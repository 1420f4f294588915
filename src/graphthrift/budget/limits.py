"""What a budget limits: its scopes, their tags, the ladder's rungs, and checked settings.

A scope's counter is keyed by the run's tag for it (``run_id`` for ``"run"``...). A call
without the tag is refused with ``BudgetScopeMissing`` rather than share one ``(none)``
bucket with every untagged run. Tenant, feature and thread counters are per UTC day. A
thread's counter is within its tenant (``thread_key``); a feature's spans every tenant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal, TypedDict

from graphthrift.errors import BudgetScopeMissing, ConfigError, ConfigTypeError

__all__ = [
    "DEFAULT_LADDER",
    "LADDER_STEPS",
    "SCOPE_KINDS",
    "TAG_OF_SCOPE",
    "BudgetTags",
    "Step",
    "check_keywords",
    "check_ladder",
    "check_tags",
    "positive",
    "scope_key",
    "scope_limits",
    "tags_from_metadata",
    "thread_key",
    "utc_day",
]

Step = Literal["compress", "cheaper_model", "summarize", "interrupt", "end"]
LADDER_STEPS: tuple[Step, ...] = ("compress", "cheaper_model", "summarize", "interrupt", "end")
DEFAULT_LADDER: tuple[Step, ...] = ("compress", "cheaper_model", "summarize", "end")
SCOPE_KINDS: tuple[str, ...] = ("run", "thread", "tenant", "feature")
#: The tag that keys each scope kind's counter.
TAG_OF_SCOPE: dict[str, str] = {
    "run": "run_id",
    "thread": "thread_id",
    "tenant": "tenant_id",
    "feature": "feature",
}


class BudgetTags(TypedDict, total=False):
    """The tags a budget's scopes are keyed by (``Budget.usage(**tags)``).

    Typed so that a misspelt tag is an error for mypy, and at run time (``check_tags``)
    instead of silently reading the wrong scope.
    """

    tenant_id: str | None
    feature: str | None
    thread_id: str | None
    run_id: str | None


def check_keywords(
    where: str, given: Mapping[str, Any], known: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """``given`` as a dict; a key not in ``known`` (a TypedDict's annotations) raises
    ``ConfigTypeError`` (a ``ConfigError`` and a ``TypeError``) naming it and the known ones."""
    for key in given:
        if key not in known:
            raise ConfigTypeError(
                f"{where}({key}=...)", given[key], f"unknown {what}; use {', '.join(known)}"
            )
    return dict(given)


def check_tags(where: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """``tags`` as a dict; an unknown key raises ``ConfigError`` naming it and the known ones."""
    return check_keywords(where, tags, BudgetTags.__annotations__, "budget tag")


def tags_from_metadata(*sources: Mapping[str, Any] | None) -> dict[str, str]:
    """tenant_id, feature, thread_id and run_id from config metadata/configurable dicts.

    Later sources win; values are kept as text. Reads through the adapter kernel
    (``graphthrift.kernel.run_tags``), so every adapter agrees on what a tag is.
    """
    from graphthrift.kernel import run_tags

    out: dict[str, str] = {}
    for source in sources:
        if not source:
            continue
        found = run_tags({"metadata": source})
        for name in TAG_OF_SCOPE.values():
            if name in found:
                out[name] = str(found[name])
    return out


def scope_key(kind: str, value: Any) -> str:
    """A scope's key as text; a missing tag or a character PostgreSQL cannot store is refused
    with a clear error (never a shared ``(none)`` bucket, never a raw ``DataError``)."""
    tag = TAG_OF_SCOPE[kind]
    if value is None or value == "":
        raise BudgetScopeMissing(kind, tag)
    key = str(value)
    if "\x00" in key:
        raise ValueError(
            f"budget tag {tag} contains a NUL character at {key.index(chr(0))}: {key!r}"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"budget tag {tag} contains a lone surrogate at {exc.start}: {key!r}"
        ) from None
    return key


def thread_key(thread: str, tenant: Any) -> str:
    """A thread counter's key: within its tenant when the run names one. Thread ids such as
    "1" recur across tenants (LangGraph's examples use them), and one tenant's spend must
    never refuse another's call. Without a tenant the key is the thread id alone."""
    if tenant is None or tenant == "":
        return thread
    return json.dumps([scope_key("tenant", tenant), thread], ensure_ascii=False)


def positive(name: str, value: Any, *, integer: bool) -> Any:
    """A limit: None (no limit) or a finite number > 0 (whole when ``integer``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(f"Budget {name}", value, "must be a number")
    if integer and not float(value).is_integer():
        raise ConfigError(f"Budget {name}", value, "must be a whole number")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"Budget {name}", value, "must be > 0; leave it out (None) for no limit")
    return int(value) if integer else float(value)


def scope_limits(name: str, value: Mapping[str, Any] | None, *, integer: bool) -> dict[str, Any]:
    """A per-scope limit dict, checked: known scope kinds, each limit ``positive``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigTypeError(
            f"Budget {name}", value, f"must be a dict keyed by scope {SCOPE_KINDS}"
        )
    out: dict[str, Any] = {}
    for kind, limit in value.items():
        if kind not in SCOPE_KINDS:
            raise ConfigError(f"Budget {name}", kind, f"unknown scope; use one of {SCOPE_KINDS}")
        out[kind] = positive(f"{name}[{kind!r}]", limit, integer=integer)
    return out


def check_ladder(ladder: Any) -> tuple[Step, ...]:
    """The ladder's rungs: known steps, none repeated."""
    steps = tuple(DEFAULT_LADDER if ladder is None else ladder)
    for step in steps:
        if step not in LADDER_STEPS:
            raise ConfigError(
                "Budget ladder", step, f"unknown ladder step; use some of {LADDER_STEPS}"
            )
    if len(set(steps)) != len(steps):
        raise ConfigError("Budget ladder", steps, "ladder steps must not repeat")
    return steps


def utc_day(moment: datetime) -> date:
    """The UTC calendar day of ``moment`` (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()
