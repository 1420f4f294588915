"""The scope keywords a cache call takes: typed for the caller's checker, checked at run time.

Every public cache method (``lookup``, ``update``, ``clear``, ...) and every cache adapter
takes the scope as keywords (``tenant_id="acme", user_id="alice"``). ``CacheScopeKwargs``
types them (``**scope: Unpack[CacheScopeKwargs]``), so mypy flags ``tenant="acme"``; at run
time an unknown keyword raises ``UnknownScopeKey`` naming it, because running the call under
the default tenant instead would read and write another tenant's entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict
from uuid import UUID

from graphthrift.cache.keys import CacheQuery, CacheScope
from graphthrift.errors import BadScopeText, UnknownScopeKey
from graphthrift.kernel import CACHE_SCOPE_KEYS
from graphthrift.text.repair import needs_repair

__all__ = [
    "SCOPE_FIELDS",
    "SCOPE_KEYWORDS",
    "CacheScopeKwargs",
    "ScopeValue",
    "check_scope_keywords",
    "resolve_scope",
]

#: A scope value: ids may be ints or UUIDs (stored as text); None leaves the default.
ScopeValue = str | int | UUID | None


class CacheScopeKwargs(TypedDict, total=False):
    """The scope keywords of every cache call; each overrides the cache's default.

    ``user_id`` is the asking user: it becomes the ``scope`` of an answer that depends on
    earlier turns (a first-turn answer stays tenant-wide), unless ``scope`` is given.
    """

    tenant_id: ScopeValue
    scope: ScopeValue
    namespace: ScopeValue
    prompt_version: ScopeValue
    model_version: ScopeValue
    corpus_version: ScopeValue
    user_id: ScopeValue


#: The fields of a ``CacheScope``, in the order the entry table indexes them (the keys the
#: adapter kernel reads from a run's metadata).
SCOPE_FIELDS: tuple[str, ...] = CACHE_SCOPE_KEYS
#: Every keyword ``CacheScopeKwargs`` allows.
SCOPE_KEYWORDS: tuple[str, ...] = (*SCOPE_FIELDS, "user_id")


def check_scope_keywords(given: Mapping[str, object]) -> None:
    """Raise ``UnknownScopeKey`` naming any keyword that is not a scope keyword."""
    unknown = {k: v for k, v in given.items() if k not in SCOPE_KEYWORDS}
    if unknown:
        raise UnknownScopeKey(unknown, SCOPE_KEYWORDS)


def resolve_scope(
    defaults: CacheScope, overrides: Mapping[str, object], key: CacheQuery | None = None
) -> CacheScope:
    """The request's scope: ``defaults``, overridden by the call's non-None fields.

    ``user_id`` (what adapters pass for the asking user) becomes the ``scope`` only when
    the key depends on earlier turns (``key.history``) and no explicit ``scope`` is given:
    a first-turn question is shared by the tenant's users, a follow-up is not (issue 11,
    item 3).

    Raises:
        UnknownScopeKey: a keyword is not a scope keyword.
        BadScopeText: a field holds a NUL byte or a lone surrogate (a repaired id could
            equal another tenant's: no entry is read or written for it).
    """
    check_scope_keywords(overrides)
    bad = sorted(k for k, v in overrides.items() if isinstance(v, str) and needs_repair(v))
    if bad:
        raise BadScopeText(bad)
    fields = {k: overrides.get(k) for k in SCOPE_FIELDS}
    user = overrides.get("user_id")
    history = key is not None and key.history
    if history and fields["scope"] in (None, "") and user not in (None, ""):
        fields["scope"] = user
    return defaults.merged(fields)
