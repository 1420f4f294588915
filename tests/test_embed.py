"""Behaviour of graphthrift.embed.embedders on the real int8 MiniLM model (no mocks)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from graphthrift.embed import (
    CallableEmbedder,
    EmbeddingShapeError,
    MiniLMEmbedder,
    as_embedder,
    default_embedder,
)

TEXTS = [
    "How do I reset my password?",
    "",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 5,
    "Ünïcödé àccents and emoji 🙂 are fine",
    "graph nodes, edges and checkpoints",
    "SELECT * FROM ledger WHERE tenant_id = 'acme';",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(batch_size=3, intra_op_threads=2)


def test_shape_dtype_and_unit_rows(minilm: MiniLMEmbedder) -> None:
    vectors = minilm.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) == (len(TEXTS), minilm.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.model_id == "all-MiniLM-L6-v2-onnx-int8"


def test_empty_input_gives_zero_rows(minilm: MiniLMEmbedder) -> None:
    assert minilm.embed([]).shape == (0, 384)


def test_paraphrase_is_closer_than_unrelated(minilm: MiniLMEmbedder) -> None:
    query, paraphrase, unrelated = minilm.embed(
        [
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "What is the weather in Paris?",
        ]
    )
    assert float(query @ paraphrase) > 0.7
    assert float(query @ unrelated) < 0.3


def test_batches_match_one_by_one(minilm: MiniLMEmbedder) -> None:
    batched = minilm.embed(TEXTS)
    single = np.vstack([minilm.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(MiniLMEmbedder(batch_size=64).embed(TEXTS), single, atol=1e-5)


def test_long_text_is_truncated_to_max_length(minilm: MiniLMEmbedder) -> None:
    long, kept = minilm.embed(["word " * 2000, "word " * 254])  # 254 + [CLS] + [SEP] = 256
    np.testing.assert_allclose(long, kept, atol=1e-5)


async def test_aembed_matches_embed(minilm: MiniLMEmbedder) -> None:
    np.testing.assert_allclose(await minilm.aembed(TEXTS), minilm.embed(TEXTS), atol=1e-6)


def test_concurrent_first_use_loads_once() -> None:
    embedder = MiniLMEmbedder(intra_op_threads=1)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(embedder.embed(TEXTS))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=1e-6)
    assert embedder._load() is embedder._load()


def test_default_embedder_is_shared() -> None:
    assert default_embedder() is default_embedder()
    assert isinstance(default_embedder(), MiniLMEmbedder)


def test_bad_texts_raise_type_error(minilm: MiniLMEmbedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        minilm.embed(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one str"):
        minilm.embed("a bare string")


def test_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        MiniLMEmbedder(batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        MiniLMEmbedder(max_length=1000)
    monkeypatch.setenv("GRAPHTHRIFT_EMBED_THREADS", "many")
    with pytest.raises(ValueError, match="GRAPHTHRIFT_EMBED_THREADS"):
        MiniLMEmbedder()
    monkeypatch.setenv("GRAPHTHRIFT_EMBED_THREADS", "1")
    monkeypatch.setenv("GRAPHTHRIFT_EMBED_BATCH_SIZE", "5")
    embedder = MiniLMEmbedder()
    assert (embedder.intra_op_threads, embedder.batch_size) == (1, 5)
    assert MiniLMEmbedder(batch_size=9).batch_size == 9


def test_as_embedder_keeps_an_embedder(minilm: MiniLMEmbedder) -> None:
    assert as_embedder(minilm) is minilm


async def test_as_embedder_wraps_langchain_embeddings() -> None:
    from langchain_core.embeddings.fake import DeterministicFakeEmbedding

    fake = DeterministicFakeEmbedding(size=32)
    embedder = as_embedder(fake, batch_size=3)
    assert isinstance(embedder, CallableEmbedder)
    assert embedder.model_id == "DeterministicFakeEmbedding"
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 32) and embedder.dim == 32
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = np.asarray(fake.embed_documents(TEXTS))
    np.testing.assert_allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(await embedder.aembed(TEXTS), vectors, atol=1e-6)
    assert embedder.embed([]).shape == (0, 32)


def test_as_embedder_wraps_llamaindex_embedding() -> None:
    embeddings = pytest.importorskip("llama_index.core.embeddings")
    embedder = as_embedder(embeddings.MockEmbedding(embed_dim=8))
    vectors = embedder.embed(["one", "two"])
    assert vectors.shape == (2, 8) and embedder.dim == 8
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_as_embedder_wraps_a_plain_callable() -> None:
    calls: list[list[str]] = []

    def lengths(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[float(len(t)), 1.0, 0.0] for t in texts]

    embedder = as_embedder(lengths, model_id="lengths", batch_size=2)
    assert embedder.model_id == "lengths"
    vectors = embedder.embed(["abc", "", "x", "yy", "zzz"])
    assert vectors.shape == (5, 3) and embedder.dim == 3
    assert [len(batch) for batch in calls] == [2, 2, 1]
    np.testing.assert_allclose(vectors[1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(vectors[0], np.array([3.0, 1.0, 0.0]) / np.sqrt(10), atol=1e-6)


def test_dim_of_an_unused_callable_is_probed() -> None:
    embedder = as_embedder(lambda texts: [[1.0] * 5 for _ in texts])
    assert embedder.dim == 5
    assert embedder.embed([]).shape == (0, 5)


def test_wrong_shapes_from_a_callable_raise() -> None:
    with pytest.raises(EmbeddingShapeError, match=r"for 2 texts") as info:
        as_embedder(lambda texts: [[1.0, 2.0]]).embed(["a", "b"])
    assert info.value.got == (1, 2)
    sizes = iter([[[1.0, 2.0]], [[1.0, 2.0, 3.0]]])
    with pytest.raises(EmbeddingShapeError):
        as_embedder(lambda texts: next(sizes), batch_size=1).embed(["a", "b"])


def test_unknown_objects_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"builtins\.object.*embed_documents"):
        as_embedder(object())
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes"):
        as_embedder(lambda texts: [[1.0] for _ in texts]).embed([b"raw"])  # type: ignore[list-item]
