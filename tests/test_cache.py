"""Exact and semantic caches on the session PostgreSQL: keys, scope, TTL, cap, policies."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from cache_helpers import bow_embedder, scratch_database
from graphthrift import diagnostics
from graphthrift.cache import (
    AdaptivePolicy,
    CacheQuery,
    ExactCache,
    SemanticCache,
    default_key,
    normalize_query,
    precision_recall_curve,
    tune_threshold,
)
from graphthrift.store import Store


def test_exact_cache_round_trip_normalizes_the_question(store: Store, tenant: str) -> None:
    cache = ExactCache(store, namespace="faq", tenant_id=tenant)
    assert cache.lookup("What are your opening hours?") is None
    entry = cache.update("What are your opening hours?", "9 to 5.", evidence_ids=["doc-1"])
    hit = cache.lookup("  what are your   OPENING hours ")
    assert hit is not None and hit.entry_id == entry
    assert hit.answer == "9 to 5." and hit.evidence_ids == ("doc-1",) and hit.layer == "exact"
    assert cache.lookup("what are your opening hours today") is None


def test_default_key_is_latest_user_question_plus_context_fingerprint() -> None:
    history = [
        {"role": "system", "content": "You are a bank assistant."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "How do I close my account?"},
    ]
    other_history = [history[0], {"role": "user", "content": "How do I close my account?"}]
    key = default_key(history)
    first_turn = default_key(other_history)
    assert key.text == first_turn.text == "How do I close my account?"
    # earlier turns are part of the key (issue 11, item 3), and mark it as history-bound
    assert key.context != first_turn.context and key.history and not first_turn.history
    assert (
        first_turn.context
        != default_key([{"role": "system", "content": "Pirate mode."}, history[-1]]).context
    )
    assert default_key("q", context=["doc-1"]).context != default_key("q").context
    assert normalize_query(" Hello  World?! ") == "hello world"


def test_custom_key_function(store: Store, tenant: str) -> None:
    cache = ExactCache(
        store, tenant_id=tenant, key_fn=lambda q: CacheQuery(q["question"], q["product"])
    )
    cache.update({"question": "price?", "product": "a"}, "10 USD")
    assert cache.lookup({"question": "price?", "product": "a"}).answer == "10 USD"
    assert cache.lookup({"question": "price?", "product": "b"}) is None


def test_versions_scope_and_namespace_never_leak(store: Store, tenant: str) -> None:
    cache = SemanticCache(store, bow_embedder(), tenant_id=tenant, threshold=0.5)
    cache.update("reset my password", "use the link", prompt_version="p1", corpus_version="c1")
    assert cache.lookup("reset my password", prompt_version="p1", corpus_version="c1")
    for other in (
        {"prompt_version": "p2", "corpus_version": "c1"},
        {"prompt_version": "p1", "corpus_version": "c2"},
        {"prompt_version": "p1", "corpus_version": "c1", "model_version": "m2"},
        {"prompt_version": "p1", "corpus_version": "c1", "scope": "user-2"},
        {"prompt_version": "p1", "corpus_version": "c1", "namespace": "other"},
        {"prompt_version": "p1", "corpus_version": "c1", "tenant_id": tenant + "x"},
    ):
        assert cache.lookup("reset my password", **other) is None, other
    # another embedding model never sees these vectors
    other_model = SemanticCache(store, lambda t: [[1.0, 0.0]] * len(t), tenant_id=tenant)
    assert other_model.lookup("reset my password", prompt_version="p1", corpus_version="c1") is None


def test_ttl_per_namespace_expires_entries(store: Store, tenant: str) -> None:
    cache = ExactCache(store, tenant_id=tenant, ttl={"news": 2.0, "*": 3600})
    cache.update("headline?", "old news", namespace="news")
    cache.update("hours?", "9 to 5", namespace="faq")
    assert cache.lookup("headline?", namespace="news") is not None  # 2 s: no stall reaches it
    time.sleep(2.2)
    assert cache.lookup("headline?", namespace="news") is None
    assert cache.lookup("hours?", namespace="faq") is not None


def test_size_cap_evicts_least_recently_used(store: Store, tenant: str) -> None:
    cache = ExactCache(store, tenant_id=tenant, max_entries=3)
    for i in range(3):
        cache.update(f"q{i}", f"a{i}")
    assert cache.lookup("q0") is not None  # q0 is now the most recently used
    cache.flush()
    cache.update("q3", "a3")
    assert cache.lookup("q1") is None  # the least recently used went
    assert all(cache.lookup(q) is not None for q in ("q0", "q2", "q3"))
    other = ExactCache(store, tenant_id=tenant + "-b", max_entries=3)
    other.update("q9", "a9")  # another tenant's cap does not touch ours
    assert cache.lookup("q0") is not None


def test_hits_are_counted_in_batches_and_a_write_flushes_them_first(
    store: Store, tenant: str
) -> None:
    cache = ExactCache(store, tenant_id=tenant, max_entries=2)
    first = cache.update("q0", "a0")
    cache.update("q1", "a1")
    assert cache.lookup("q0") is not None and cache.lookup("q0") is not None

    def hits() -> int:
        with store.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT hits FROM graphthrift_cache_entries WHERE id = :i"), {"i": first}
                ).scalar_one()
            )

    assert hits() == 0  # no write on the lookup's path
    cache.update("q2", "a2")  # flushes the two hits before evicting: q1 goes, not q0
    assert hits() == 2
    assert cache.lookup("q1") is None and cache.lookup("q0") is not None
    cache.flush()
    assert hits() == 3


def test_concurrent_hit_flushes_on_the_same_entries_do_not_deadlock(
    store: Store, tenant: str
) -> None:
    import threading

    from graphthrift import diagnostics

    writer = ExactCache(store, tenant_id=tenant)
    ids = [writer.update(f"q{i}", f"a{i}") for i in range(40)]
    caches = [ExactCache(store, tenant_id=tenant) for _ in range(3)]
    before = diagnostics.get("cache_touch_failure")
    for round_ in range(3):
        for k, cache in enumerate(caches):  # each cache touches the entries in its own order
            for i in range(40) if (k + round_) % 2 else reversed(range(40)):
                cache._touch(ids[i])  # type: ignore[arg-type]
        threads = [threading.Thread(target=c.flush) for c in caches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert diagnostics.get("cache_touch_failure") == before
    with store.connect() as conn:
        total = conn.execute(
            text("SELECT sum(hits) FROM graphthrift_cache_entries WHERE id = ANY(:i)"), {"i": ids}
        ).scalar_one()
    assert total == 3 * 3 * 40


def test_semantic_cache_with_minilm_serves_paraphrases_only(store: Store, tenant: str) -> None:
    cache = SemanticCache(store, tenant_id=tenant, threshold=0.8)
    cache.update("How do I reset my password?", "Use the 'Forgot password' link.")
    hit = cache.lookup("how can I reset my password")
    assert hit is not None and hit.similarity > 0.8 and hit.layer == "semantic"
    assert cache.lookup("What is the exchange rate for euros?") is None


def test_tool_calls_and_structured_output_are_not_stored_unless_asked(
    store: Store, tenant: str
) -> None:
    cache = ExactCache(store, tenant_id=tenant)
    assert cache.update("weather?", "", tool_calls=True) is None
    assert cache.update("form?", "{}", structured=True) is None
    assert cache.lookup("weather?") is None
    assert ExactCache(store, tenant_id=tenant, cache_tool_calls=True).update(
        "weather?", "", tool_calls=True
    )


def test_hits_write_ledger_records_with_savings(store: Store, tenant: str, ledger) -> None:  # type: ignore[no-untyped-def]
    cache = ExactCache(store, tenant_id=tenant, ledger=ledger)
    cache.update("hours?", "9 to 5", model="gpt-4o-mini", input_tokens=1000, output_tokens=200)
    assert cache.lookup("hours?", feature="faq", node="answer") is not None
    semantic = SemanticCache(store, bow_embedder(), tenant_id=tenant, ledger=ledger)
    semantic.update("reset password", "link", model="gpt-4o-mini", input_tokens=500)
    assert semantic.lookup("reset password") is not None
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="cache_hit")
    assert {r["layer"] for r in rows} == {"exact", "semantic"}
    exact = next(r for r in rows if r["layer"] == "exact")
    assert exact["feature"] == "faq" and exact["node"] == "answer" and exact["cost_usd"] == 0.0
    assert exact["saved_usd"] > 0
    report = {r["layer"]: r for r in ledger.report(by=["layer"], tenant_id=tenant)}
    assert report["exact"]["cache_hits"] == 1 and report["semantic"]["saved_usd"] > 0


def test_shadow_mode_serves_nothing_but_reports_precision(store: Store, tenant: str) -> None:
    live = ExactCache(store, tenant_id=tenant)
    live.update("hours?", "9 to 5", model="gpt-4o-mini", input_tokens=100)
    live.update("refund?", "14 days", model="gpt-4o-mini", input_tokens=100)
    shadow = ExactCache(store, tenant_id=tenant, shadow=True)
    assert shadow.lookup("hours?") is None
    shadow.update("hours?", "9 to 5")  # the fresh answer agrees: a would-be correct hit
    assert shadow.lookup("refund?") is None
    shadow.update("refund?", "30 days")  # disagrees: a would-be wrong hit
    report = shadow.shadow_report()
    assert report["would_hit"] == 2 and report["judged"] == 2 and report["precision"] == 0.5
    assert report["would_save_usd"] > 0


def test_adaptive_policy_learns_per_entry_from_verified_reuse(store: Store, tenant: str) -> None:
    policy = AdaptivePolicy(max_error=0.05)
    assert not policy.serve(0.99, [], [])  # cold: too uncertain
    # the namespace learns that reuse above ~0.9 is right, below ~0.8 wrong
    sims = [0.7 + 0.003 * i for i in range(100)]
    policy.observe_many(sims, [s > 0.85 for s in sims])
    assert policy.serve(0.99, [], []) and not policy.serve(0.75, [], [])
    # an entry whose reuse keeps being wrong at 0.95 stops being served there
    assert policy.serve(0.96, [], [])
    assert not policy.serve(0.96, [0.95] * 20, [False] * 20)

    cache = SemanticCache(store, bow_embedder(), tenant_id=tenant, policy=policy)
    cache.update("reset my password please", "use the link")
    hit = cache.lookup("reset my password please")
    assert hit is not None and hit.similarity > 0.99
    for _ in range(10):
        cache.feedback(hit, False)
    assert cache.lookup("reset my password please") is None
    with store.connect() as conn:
        obs = conn.execute(
            text("SELECT obs_ok FROM graphthrift_cache_entries WHERE id = :i"), {"i": hit.entry_id}
        ).scalar_one()
    assert obs == [False] * 10


def test_adaptive_miss_is_judged_when_the_fresh_answer_arrives(store: Store, tenant: str) -> None:
    cache = SemanticCache(
        store, bow_embedder(), tenant_id=tenant, policy="adaptive", max_error=0.01
    )
    entry = cache.update("how do I reset my password", "use the link")
    assert cache.lookup("how do I reset my password now") is None  # cold: explore
    cache.update("how do I reset my password now", "use the link")  # verify: same answer
    with store.connect() as conn:
        ok = conn.execute(
            text("SELECT obs_ok FROM graphthrift_cache_entries WHERE id = :i"), {"i": entry}
        ).scalar_one()
    assert ok == [True]


def test_curve_and_tuning_pick_the_lowest_threshold_meeting_the_target() -> None:
    sims = [0.99, 0.97, 0.95, 0.93, 0.91, 0.89, 0.80]
    labels = [True, True, True, False, True, False, False]
    curve = precision_recall_curve(sims, labels)
    chosen = tune_threshold(curve, 1.0, confidence=0.0)
    assert 0.93 < chosen.threshold <= 0.95 and chosen.recall == 0.75
    assert 0.89 < tune_threshold(curve, 0.8, confidence=0.0).threshold <= 0.91
    with pytest.raises(ValueError, match="no threshold reaches"):
        tune_threshold(precision_recall_curve([0.9], [False]), 0.9, confidence=0.0)


def test_tuning_requires_the_target_at_95_percent_confidence_by_default() -> None:
    # 1000 hits at 0.99..0.95 with 1 % wrong, then a band at 0.90 that keeps the pooled
    # precision at 0.97: the plain precision accepts 0.90, the Wilson bound does not
    sims = [0.99 - 0.04 * i / 1000 for i in range(1000)] + [0.90] * 200
    labels = [i % 100 != 0 for i in range(1000)] + [i % 20 >= 2 for i in range(200)]
    curve = precision_recall_curve(sims, labels, thresholds=[0.90, 0.95])
    plain = tune_threshold(curve, 0.97, rule="cumulative", confidence=0.0)
    assert plain.threshold == 0.90 and plain.precision >= 0.97
    robust = tune_threshold(curve, 0.97, rule="cumulative")  # Wilson lower bound at 95 %
    assert robust.threshold == 0.95 and robust == tune_threshold(
        curve, 0.97, rule="cumulative", confidence=0.95
    )
    # the local rule (the default) rejects the 90 %-right band even without the bound
    assert tune_threshold(curve, 0.97, confidence=0.0).threshold == 0.95
    assert tune_threshold(curve, 0.97) == robust
    # fewer hits, a wider bound: 49/50 right meets 0.97 plainly but not with confidence
    small = precision_recall_curve([0.95] * 50, [i != 0 for i in range(50)])
    assert tune_threshold(small, 0.97, confidence=0.0).threshold <= 0.95
    with pytest.raises(ValueError, match="no threshold reaches"):
        tune_threshold(small, 0.97)
    with pytest.raises(ValueError, match="confidence"):
        tune_threshold(small, 0.9, confidence=1.0)


async def test_async_paths_share_the_logic(store: Store, tenant: str) -> None:
    cache = SemanticCache(store, bow_embedder(), tenant_id=tenant, threshold=0.9)
    assert await cache.alookup("opening hours") is None
    await cache.aupdate("opening hours", "9 to 5")
    hit = await cache.alookup("opening hours")
    assert hit is not None and hit.answer == "9 to 5"
    await cache.afeedback(hit, True)
    assert await cache.aclear() == 1
    assert await cache.alookup("opening hours") is None


def test_fail_open_when_the_database_is_down(store: Store, tmp_path: Path) -> None:
    with scratch_database(store.url) as (url, set_down):
        db = Store(url, home=tmp_path)
        cache = SemanticCache(db, bow_embedder(), tenant_id="t", timeout=0.5)
        cache.update("hours?", "9 to 5")
        assert cache.lookup("hours?") is not None
        set_down(True)
        before = diagnostics.get("cache_lookup_failure")
        assert cache.lookup("hours?") is None  # a miss, not an error
        assert cache.update("other?", "x") is None
        assert diagnostics.get("cache_lookup_failure") > before
        assert diagnostics.get("cache_store_failure") >= 1
        set_down(False)
        for _ in range(3):  # stale pooled connections fail once each, then heal
            if cache.lookup("hours?") is not None:
                break
        assert cache.lookup("hours?") is not None
        db.close()


async def test_fail_open_when_a_lookup_is_slower_than_the_timeout(
    store: Store, tmp_path: Path
) -> None:
    with scratch_database(store.url) as (url, _):
        db = Store(url, home=tmp_path)
        cache = ExactCache(db, tenant_id="t", timeout=0.2)
        cache.update("hours?", "9 to 5")
        with db.engine.connect() as blocker:  # another session holds the table
            blocker.execute(text("LOCK TABLE graphthrift_cache_entries IN ACCESS EXCLUSIVE MODE"))
            before = diagnostics.get("cache_timeout")
            assert cache.lookup("hours?") is None
            assert await cache.alookup("hours?") is None
            assert diagnostics.get("cache_timeout") >= before + 2
            blocker.rollback()
        assert cache.lookup("hours?") is not None
        db.close()


def test_clear_only_touches_its_tenant_and_namespace(store: Store, tenant: str) -> None:
    a = ExactCache(store, tenant_id=tenant, namespace="a")
    b = ExactCache(store, tenant_id=tenant, namespace="b")
    a.update("q", "1")
    b.update("q", "2")
    assert a.clear() == 1
    assert a.lookup("q") is None and b.lookup("q").answer == "2"


def test_rejects_bad_settings(store: Store) -> None:
    with pytest.raises(ValueError, match="ttl"):
        ExactCache(store, ttl=0)
    with pytest.raises(ValueError, match="max_entries"):
        ExactCache(store, max_entries=0)
    with pytest.raises(ValueError, match="policy"):
        SemanticCache(store, bow_embedder(), policy="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_error"):
        AdaptivePolicy(max_error=0)
    assert uuid  # keep import for fixtures that need unique names
