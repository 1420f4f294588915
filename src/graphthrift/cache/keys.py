"""What a cache entry is keyed on: the scope it belongs to and the query it answers.

The default key is safe: an answer is reused only when everything it could depend on
matches. That is the latest user question, plus a short fingerprint of the context the
answer depends on: the system prompt, the earlier turns that were sent with the question,
retrieved evidence, anything the caller passes as ``context``. Two first-turn questions
under the same instructions share an entry (an FAQ hits across conversations); a follow-up
such as "What was the first order I asked about?" only hits in a conversation with the
same earlier turns, and the cache also keeps it to the asking user (``CacheQuery.history``
tells the cache to apply the user's scope, issue 11, item 3).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from graphthrift.errors import CacheArgumentError, ConfigError, UnknownScopeKey
from graphthrift.text.messages import Message, to_messages

__all__ = [
    "CacheQuery",
    "CacheScope",
    "KeyFunction",
    "default_key",
    "fingerprint",
    "normalize_query",
]

_SPACES = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?!.。？！]+$")


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Who may be served an entry, and what it was produced with.

    A lookup only ever sees entries whose every field equals the request's.

    Attributes:
        tenant_id: the customer the entry belongs to.
        scope: a narrower audience inside the tenant (a user id, a role); "" for tenant-wide.
        namespace: the feature or cache area; TTL and size caps are set per namespace.
        prompt_version, model_version, corpus_version: what produced the answer; bump any of
            them and old entries are never served again (they age out by TTL or eviction).
    """

    tenant_id: str = ""
    scope: str = ""
    namespace: str = "default"
    prompt_version: str = ""
    model_version: str = ""
    corpus_version: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                raise CacheArgumentError(
                    f"CacheScope.{f.name}", value, f"must be a str, got {type(value).__name__}"
                )
        if not self.namespace:
            raise ConfigError("CacheScope.namespace", self.namespace, "must not be empty")

    def merged(self, overrides: Mapping[str, Any]) -> CacheScope:
        """This scope with the non-None ``overrides`` applied (ints and UUIDs become text)."""
        names = tuple(f.name for f in fields(self))
        unknown = {k: v for k, v in overrides.items() if k not in names}
        if unknown:
            raise UnknownScopeKey(unknown, names)
        changes = {k: str(v) for k, v in overrides.items() if v is not None}
        return replace(self, **changes) if changes else self


@dataclass(frozen=True, slots=True)
class CacheQuery:
    """The text a lookup matches on, and a fingerprint of the context it depends on.

    ``text`` is embedded by the semantic layer and normalized then hashed by the exact one.
    ``context`` must match exactly (it is a filter column, never mixed into the embedding).
    ``history`` says the context includes earlier turns of a conversation, so the answer
    may depend on who the user is: the cache then applies the user's scope.
    """

    text: str
    context: str = ""
    history: bool = False  # the context holds earlier turns: keep the entry to its user

    @property
    def normalized(self) -> str:
        return normalize_query(self.text)


KeyFunction = Callable[[Any], CacheQuery]
"""Maps what the caller looked up (a string, a list of messages) to a ``CacheQuery``."""


def normalize_query(text: str) -> str:
    """Unicode NFC, case-folded, whitespace collapsed, trailing punctuation dropped.

    Only case and spacing are folded. NFKC would also fold characters that change the
    meaning ("2³" into "23", "½" into "1/2"), making different questions one key
    (issue 12, item 12); NFC only joins canonically equal spellings (é and e + ´).

    Example:
        >>> normalize_query("  How do I  reset my PASSWORD?? ")
        'how do i reset my password'
    """
    folded = unicodedata.normalize("NFC", text).casefold()
    return _TRAILING.sub("", _SPACES.sub(" ", folded).strip())


def fingerprint(parts: Iterable[str], length: int = 16) -> str:
    """A short stable hash of some texts ("" when there are none)."""
    items = [p for p in parts if p]
    if not items:
        return ""
    digest = hashlib.sha256("\x1f".join(items).encode("utf-8")).hexdigest()
    return digest[:length]


def _context_texts(context: Any) -> list[str]:
    if context is None:
        return []
    if isinstance(context, str):
        return [context]
    if isinstance(context, Mapping):
        return [json.dumps(context, sort_keys=True, default=str)]
    return [str(c) for c in context]


def _turn_text(message: Message) -> str:
    """One earlier turn as fingerprinted: role, text and tool calls (not their random ids)."""
    calls = [f"{c.name}({c.args})" for c in message.tool_calls]
    return "\x1e".join([message.role, message.text, *calls])


def default_key(query: Any, context: Any = None) -> CacheQuery:
    """The default key: the latest user message plus a fingerprint of what it depends on.

    ``query`` is a string or a list of messages (LangChain, LlamaIndex, OpenAI dicts). For
    messages, the context fingerprint covers the system messages and every earlier turn
    (user, assistant and tool messages before the latest user message); ``context``
    (evidence ids, retrieved passages, a dict of settings) is added to it. A question with
    earlier turns is marked ``history=True``: its answer may depend on them, and on the
    user, so it is only reused for the same turns and the same user.

    Raises:
        ValueError: the messages hold no user message to key on.
    """
    extra = _context_texts(context)
    if isinstance(query, str):
        return CacheQuery(query, fingerprint(extra))
    if isinstance(query, CacheQuery):
        return CacheQuery(query.text, fingerprint([query.context, *extra]), query.history)
    messages: list[Message] = to_messages(query)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if last_user < 0:
        raise ValueError(
            f"cannot key a cache lookup on {len(messages)} messages without a user message; "
            "pass the question as a string or supply key_fn="
        )
    system = [m.text for m in messages if m.role == "system"]
    turns = [_turn_text(m) for m in messages[:last_user] if m.role != "system"]
    parts = [*system, *extra]
    if turns:
        parts.append("turns:" + fingerprint(turns, 32))
    return CacheQuery(messages[last_user].text, fingerprint(parts), bool(turns))


def key_hash(layer: str, scope: CacheScope, embedding_model: str, query: CacheQuery) -> str:
    """The exact key: a hash of the layer, every scope field, the model and the normalized text."""
    parts = [layer, *(getattr(scope, f.name) for f in fields(scope))]
    parts += [embedding_model, query.context, query.normalized]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
