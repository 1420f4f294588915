"""StaticEmbedder: MiniLM distilled to per-token vectors, on the real model (no mocks)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from graphthrift.embed import MiniLMEmbedder, StaticEmbedder
from graphthrift.route import DifficultyClassifier


@pytest.fixture(scope="module")
def source() -> MiniLMEmbedder:
    return MiniLMEmbedder(max_length=64)


def test_unit_rows_and_zero_row_for_empty_text(source: MiniLMEmbedder) -> None:
    vectors = StaticEmbedder(source).embed(["How do I reset my password?", "", "ok"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 2]], 1.0, atol=1e-5)
    assert norms[1] == 0.0
    assert StaticEmbedder(source).embed([]).shape == (0, 384)


def test_a_one_token_text_is_that_tokens_model_output(source: MiniLMEmbedder) -> None:
    (ids,) = source.token_ids(["password"])
    assert len(ids) == 1
    expected = source.token_vectors(ids)[0]
    got = StaticEmbedder(source).embed(["password"])[0]
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)


def test_distils_only_new_tokens(source: MiniLMEmbedder) -> None:
    static = StaticEmbedder(source)
    static.embed(["reset my password"])
    first = static.distilled
    assert first == len(set(source.token_ids(["reset my password"])[0]))
    static.embed(["my password reset"])
    assert static.distilled == first
    static.embed(["a card payment"])
    assert static.distilled > first


def test_paraphrase_is_closer_than_unrelated(source: MiniLMEmbedder) -> None:
    query, paraphrase, unrelated = StaticEmbedder(source).embed(
        [
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "What is the weather in Paris?",
        ]
    )
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.1


def test_concurrent_embeds_match_serial(source: MiniLMEmbedder) -> None:
    texts = [f"transfer {n} dollars to account {n * 7} before friday" for n in range(40)]
    serial = StaticEmbedder(source).embed(texts)
    shared = StaticEmbedder(source)
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda t: shared.embed([t])[0], texts))
    np.testing.assert_allclose(np.vstack(rows), serial, atol=1e-6)


async def test_aembed_matches_embed(source: MiniLMEmbedder) -> None:
    static = StaticEmbedder(source)
    np.testing.assert_allclose(await static.aembed(["hello there"]), static.embed(["hello there"]))


def test_router_classifier_defaults_to_the_static_embedder() -> None:
    clf = DifficultyClassifier()
    assert clf.embedder.model_id == StaticEmbedder.model_id


def test_bad_texts_are_refused(source: MiniLMEmbedder) -> None:
    with pytest.raises(TypeError, match="not one str"):
        StaticEmbedder(source).embed("a bare string")  # type: ignore[arg-type]
