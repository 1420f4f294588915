"""graphthrift.Router core: difficulty, validators, cascade, sticky threads, ledger, classifier."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graphthrift.route import (
    Answer,
    DifficultyClassifier,
    JsonSchemaValidator,
    Router,
    ToolArgsValidator,
    answer_confidence,
)

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
EASY = "How do I reset my card PIN?"
HARD = (
    "Explain why the algorithm below is O(n log n), then compare it with quicksort and "
    "prove the bound:\n```python\ndef sort(xs):\n    return merge(sort(xs[:m]), sort(xs[m:]))\n```"
)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Router(CHEAP, CHEAP)
    with pytest.raises(ValueError):
        Router(CHEAP, STRONG, threshold=1.5)
    with pytest.raises(ValueError):
        Router("", STRONG)


def test_easy_goes_cheap_hard_goes_strong() -> None:
    router = Router(CHEAP, STRONG)
    assert router.route(EASY).model == CHEAP
    hard = router.route(HARD)
    assert hard.model == STRONG and hard.route == "escalated"
    assert router.route([{"role": "user", "content": EASY}]).tier == "cheap"


def test_confidence_and_validators() -> None:
    assert answer_confidence(Answer("")) == 0.0
    assert answer_confidence(Answer("I'm not sure, maybe 4?")) < 0.5
    assert answer_confidence(Answer("It is 4.")) == 1.0
    schema = JsonSchemaValidator({"type": "object", "required": ["answer"]})
    assert schema(Answer('{"answer": 1}')) is None
    assert schema(Answer("plain text")) is not None
    assert schema(Answer('{"other": 1}')) is not None
    tools = ToolArgsValidator(
        {
            "get_rate": {
                "type": "object",
                "properties": {"ccy": {"type": "string"}},
                "required": ["ccy"],
            }
        }
    )
    assert tools(Answer("", ({"name": "get_rate", "args": {"ccy": "EUR"}},))) is None
    assert tools(Answer("", ({"name": "get_rate", "args": {}},))) is not None
    assert tools(Answer("", ({"name": "nope", "args": {}},))) is not None


def test_cascade_escalates_on_validator_confidence_and_error() -> None:
    def wants_digits(answer: Answer) -> bool:
        return any(ch.isdigit() for ch in answer.text)

    router = Router(CHEAP, STRONG, validators=[wants_digits])
    answers = {CHEAP: "about three", STRONG: "3"}
    result = router.run(EASY, lambda m: answers[m])
    assert result.route == "escalated" and result.reason == "validator" and result.answer == "3"

    answers = {CHEAP: "I don't know", STRONG: "42"}
    assert router.run(EASY, lambda m: answers[m]).reason == "confidence"

    def flaky(model: str) -> str:
        if model == CHEAP:
            raise TimeoutError("cheap model timed out")
        return "7"

    result = router.run(EASY, flaky)
    assert result.reason == "error" and result.model == STRONG
    answers = {CHEAP: "12", STRONG: "12"}
    ok = router.run(EASY, lambda m: answers[m])
    assert ok.route == "cheap" and ok.attempts == 1
    assert router.stats["requests"] == 4 and router.stats["cascaded"] == 3
    assert router.escalation_rate == 0.75
    strict = Router(CHEAP, STRONG, escalate_on_error=False)
    with pytest.raises(TimeoutError):
        strict.run(EASY, flaky)


def test_async_cascade() -> None:
    router = Router(CHEAP, STRONG)

    async def call(model: str) -> str:
        return "" if model == CHEAP else "done"

    result = asyncio.run(router.arun(EASY, call))
    assert result.model == STRONG and result.reason == "confidence"


def test_sticky_threads_keep_their_tier() -> None:
    router = Router(CHEAP, STRONG, sticky=True, max_threads=2)
    assert router.route(EASY, thread_id="a").tier == "cheap"
    again = router.route(HARD, thread_id="a")  # stays cheap: its cache is warm
    assert again.tier == "cheap" and again.reason == "sticky"
    router.run(EASY, lambda m: "" if m == CHEAP else "ok", thread_id="a")  # escalates
    assert router.route(EASY, thread_id="a").tier == "strong"
    router.route(EASY, thread_id="b")
    router.route(EASY, thread_id="c")  # "a" is forgotten (max_threads=2)
    assert router.route(EASY, thread_id="a").reason == "difficulty"


def test_route_rows_in_the_ledger(ledger: Any, tenant: str) -> None:
    router = Router(CHEAP, STRONG, ledger=ledger, tags={"tenant_id": tenant})
    router.run(EASY, lambda m: "fine, 1")
    router.run(EASY, lambda m: "" if m == CHEAP else "2")
    router.run(HARD, lambda m: "3")
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="route")
    assert sorted(r["route"] for r in rows) == ["cheap", "escalated", "escalated"]
    assert {r["extra"]["reason"] for r in rows} == {None, "confidence", "difficulty"}


def test_classifier_learns_labels(tmp_path: Any) -> None:
    easy = [f"How do I {v} my card?" for v in ("activate", "freeze", "top up", "cancel", "find")]
    hard = [
        f"Compare {a} and {b}, explain why they differ, and then derive the implications."
        for a, b in (
            ("RSA", "ECC"),
            ("TCP", "UDP"),
            ("SVD", "PCA"),
            ("B-trees", "LSM trees"),
            ("Raft", "Paxos"),
        )
    ]
    clf = DifficultyClassifier().fit(easy + hard, [0] * 5 + [1] * 5)
    probs = clf.predict_proba(
        [
            "How do I unblock my card?",
            "Compare Kafka and Pulsar and "
            "explain why their storage differs, then derive the costs.",
        ]
    )
    assert probs[0] < 0.5 < probs[1]
    path = tmp_path / "clf.npz"
    clf.save(path)
    loaded = DifficultyClassifier.load(path, clf.embedder)
    router = Router(CHEAP, STRONG, classifier=loaded)
    assert router.route("How do I unblock my card?").tier == "cheap"
    with pytest.raises(ValueError):
        DifficultyClassifier().fit(easy, [0] * 5)


class CountingEmbedder:
    """A deterministic bag-of-characters embedder that counts what it is asked to embed."""

    model_id = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed(self, texts: Any) -> Any:
        import numpy as np

        self.seen.extend(texts)
        out = np.zeros((len(texts), 8))
        for i, text in enumerate(texts):
            for ch in text:
                out[i, ord(ch) % 8] += 1.0
        return out


def test_classifier_embeds_a_short_window_once(tmp_path: Any) -> None:
    embedder = CountingEmbedder()
    easy = ["How do I reset my pin?", "Where is my card?", "What is my balance?"]
    hard = ["Compare A and B, then explain why.", "Derive the equation step by step."] * 2
    clf = DifficultyClassifier(embedder, embed_chars=16, cache_size=2).fit(
        easy + hard, [0] * 3 + [1] * 4
    )
    embedder.seen.clear()
    long_text = "context " * 200 + "\nCompare X and Y and then explain why?"
    batch = clf.predict_proba([long_text, "Where is my card?"])
    assert all(len(t) <= 16 for t in embedder.seen)
    one = clf.predict_one(long_text)
    assert (
        abs(one - batch[0]) < 1e-9 and abs(clf.predict_one("Where is my card?") - batch[1]) < 1e-9
    )
    embedder.seen.clear()
    for _ in range(3):
        clf.predict_one(long_text)
    assert embedder.seen == []  # served from the LRU
    clf.predict_one("a")
    clf.predict_one("b")  # evicts long_text's window (cache_size=2)
    clf.predict_one(long_text)
    assert embedder.seen == ["a", "b", long_text[-16:]]
    clf.cache_clear()
    clf.predict_one(long_text)
    assert embedder.seen[-1] == long_text[-16:] and len(embedder.seen) == 4
    path = tmp_path / "w.npz"
    clf.save(path)
    loaded = DifficultyClassifier.load(path, embedder)
    assert loaded.embed_chars == 16 and abs(loaded.predict_one(long_text) - one) < 1e-9
