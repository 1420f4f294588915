"""Properties that must never break: a lookup only serves its own scope, versions, unexpired."""

from __future__ import annotations

import time
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_helpers import bow_embedder
from graphthrift.cache import ExactCache, SemanticCache
from graphthrift.store import Store

FIELDS = ("tenant_id", "scope", "namespace", "prompt_version", "model_version", "corpus_version")
values = st.sampled_from(["a", "b"])
scopes = st.fixed_dictionaries({f: values for f in FIELDS})
QUESTIONS = ["reset my password", "opening hours today", "close my account"]

_settings = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_settings
@given(
    writes=st.lists(
        st.tuples(scopes, st.sampled_from(QUESTIONS), st.booleans()), min_size=1, max_size=6
    ),
    read=scopes,
    question=st.sampled_from(QUESTIONS),
    semantic=st.booleans(),
)
def test_a_lookup_serves_only_entries_of_its_exact_scope_and_versions(
    store: Store,
    writes: list[tuple[dict[str, str], str, bool]],
    read: dict[str, str],
    question: str,
    semantic: bool,
) -> None:
    run = uuid.uuid4().hex[:8]  # isolates examples from each other
    tag = lambda s: {k: f"{run}-{v}" for k, v in s.items()}  # noqa: E731
    cache: ExactCache = (
        SemanticCache(
            store,
            bow_embedder(),
            threshold=0.0,
            ttl={f"{run}-a": 3600, "*": 3600},
            lexical_guard=False,
        )
        if semantic
        else ExactCache(store, ttl=3600)
    )
    expired = (
        ExactCache(store, ttl=0.001)
        if not semantic
        else SemanticCache(store, bow_embedder(), threshold=0.0, ttl=0.001)
    )
    last: dict[tuple[tuple[tuple[str, str], ...], str], tuple[str, bool]] = {}
    for scope, q, is_expired in writes:
        answer = f"{run}|{sorted(scope.items())}|{q}|{is_expired}"
        (expired if is_expired else cache).update(q, answer, **tag(scope))
        last[(tuple(sorted(scope.items())), q)] = (answer, is_expired)  # an upsert: last wins
    wanted = tuple(sorted(read.items()))
    live = {q: a for (s, q), (a, gone) in last.items() if s == wanted and not gone}
    if any(gone for *_, gone in writes):
        # the expired entries' 1 ms must have passed: a lookup right after the write was
        # sometimes inside it (the TTL is counted from before the INSERT)
        time.sleep(0.05)
    hit = cache.lookup(question, **tag(read))
    if hit is None:
        # with threshold 0 the semantic layer serves whenever a live entry exists in scope
        assert not (semantic and live) and (semantic or question not in live)
        return
    assert hit.answer.startswith(run)
    assert hit.answer in live.values()  # never another scope's, version's or an expired one
    assert hit.answer.endswith("|False")
    if not semantic:
        assert hit.answer == live[question]
