"""Exact and semantic answer caches on the shared PostgreSQL + pgvector store (the overview).

The code lives in one module per idea: ``exact`` and ``semantic`` (the two layers),
``base`` (what they share), ``hit``, ``scope``, ``keys``, ``guard``, ``policy``, ``tuning``,
``statements`` (the SQL) and ``db``. This module keeps the old import path
(``graphthrift.cache.cache``) working and documents the guarantees of both layers.

``ExactCache`` serves an answer when the normalized question, under the same tenant, scope,
namespace and versions, was answered before. ``SemanticCache`` also serves paraphrases: it
embeds the question and searches a pgvector HNSW index (cosine), filtered by the same
indexed columns, and serves the nearest entry when the policy accepts its similarity:

- ``policy="static"`` with ``threshold`` (tune it with ``graphthrift cache tune``);
- ``policy="adaptive"`` with ``max_error=δ``: per-entry thresholds learned from observed
  reuse (verified misses and ``feedback``), serving when the entry's posterior P(correct)
  keeps served hits wrong with probability at most δ (see ``graphthrift.cache.policy``).

Guarantees:

- Isolation: a lookup's WHERE clause names the tenant_id, scope, namespace, prompt, model
  and corpus versions, embedding model and context fingerprint; an entry differing in any
  of them, or expired, is never returned.
- TTL per namespace (``ttl=3600`` or ``ttl={"faq": 86400, "news": 600, "*": 3600}``).
- Size cap per tenant and namespace (``max_entries``): each write evicts expired entries,
  then the least recently used (by last hit, else creation) beyond the cap.
- Fail open: if the database is down or slower than ``timeout`` seconds, a lookup returns
  a miss (counted as ``cache_lookup_failure`` / ``cache_timeout`` in
  ``graphthrift.diagnostics``) and a write is dropped (``cache_store_failure``); the caller
  calls the model as if there were no cache. The deadline covers the database part of a
  lookup; the embedding is computed before it.
- Shadow mode (``shadow=True``) serves nothing but logs what would have hit; when the
  fresh answer is then stored, ``verify(cached, fresh)`` judges the would-be hit, and
  ``shadow_report()`` shows would-be hit rate, precision and savings.
- Keys (``default_key``): the question, folded for case and spaces only, plus a fingerprint
  of the system prompt, the earlier turns and ``context``; an answer that depends on earlier
  turns is kept to the asking user (``user_id``), a first-turn answer is tenant-wide.
- Never stored: graphthrift's own messages, errors, refusals (``storable``; pass the
  answer's message as ``source=``).
- Lexical guard (``SemanticCache``, on by default): a hit whose question differs from the
  query in numbers, identifiers, dates, negation or named entities is a miss.
- Durability: writes use ``synchronous_commit=off``; entries written just before a
  PostgreSQL server crash may be lost (a cache miss later, never a wrong answer).
- Every served hit writes a ``cache_hit`` ledger record (``layer`` = ``exact`` or
  ``semantic``) with the tokens the avoided call would have used, so
  ``ledger.report(by=["layer"])`` shows savings per layer.

Settings: keyword arguments, then ``GRAPHTHRIFT_CACHE_TIMEOUT`` (seconds, default 0.1),
``GRAPHTHRIFT_CACHE_THRESHOLD`` (default 0.92) and ``GRAPHTHRIFT_CACHE_EF_SEARCH``
(default 40: at 100,000 entries it finds the exact nearest entry of the scope for 99.1 % of
banking77 queries, against 99.3 % at 64, and searches about a quarter faster).

Example:
    >>> cache = SemanticCache(store, namespace="faq", ttl=86400, tenant_id="acme")
    >>> cache.update("How do I reset my password?", "Use the 'Forgot password' link.")
    >>> hit = cache.lookup("how can I reset my password")
    >>> hit.answer if hit else None
    "Use the 'Forgot password' link."
"""

from __future__ import annotations

from graphthrift.cache.exact import ExactCache
from graphthrift.cache.guard import lexical_conflict
from graphthrift.cache.hit import CacheHit
from graphthrift.cache.keys import CacheQuery, CacheScope, default_key, fingerprint, normalize_query
from graphthrift.cache.policy import AdaptivePolicy, StaticPolicy
from graphthrift.cache.semantic import SemanticCache
from graphthrift.cache.tuning import CurvePoint, precision_recall_curve, tune_threshold
from graphthrift.errors import BadScopeText, CacheUnavailable

__all__ = [
    "AdaptivePolicy",
    "BadScopeText",
    "CacheHit",
    "CacheQuery",
    "CacheScope",
    "CacheUnavailable",
    "CurvePoint",
    "ExactCache",
    "SemanticCache",
    "StaticPolicy",
    "default_key",
    "fingerprint",
    "lexical_conflict",
    "normalize_query",
    "precision_recall_curve",
    "tune_threshold",
]
