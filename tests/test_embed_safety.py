"""Bad and huge texts through every embedder entry point: repaired and counted, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from graphthrift import diagnostics
from graphthrift.embed import CallableEmbedder, MiniLMEmbedder, StaticEmbedder, bound_text

BAD = ["caf\udce9 au lait", "nul\x00byte", "pair \ud83d\ude00 split", "\ud800"]
REPAIRED = ["caf\ufffd au lait", "nulbyte", "pair \U0001f600 split", "\ufffd"]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(intra_op_threads=1)


def test_minilm_repairs_surrogates_and_nul_instead_of_raising(minilm: MiniLMEmbedder) -> None:
    before = diagnostics.get("text_repaired")
    vectors = minilm.embed(BAD)
    assert vectors.shape == (4, minilm.dim)
    assert np.allclose(vectors, minilm.embed(REPAIRED), atol=1e-5)
    assert np.allclose(minilm.embed(BAD[:1]), minilm.embed(REPAIRED[:1]), atol=1e-5)
    assert minilm.token_ids(BAD) == minilm.token_ids(REPAIRED)
    assert diagnostics.get("text_repaired") >= before + 2 * len(BAD)


async def test_async_and_static_entry_points_repair_the_same_way(minilm: MiniLMEmbedder) -> None:
    assert np.allclose(await minilm.aembed(BAD), minilm.embed(REPAIRED), atol=1e-5)
    static = StaticEmbedder(minilm)
    assert np.allclose(static.embed(BAD), static.embed(REPAIRED), atol=1e-5)
    assert np.allclose(await static.aembed(BAD), static.embed(REPAIRED), atol=1e-5)


async def test_a_wrapped_function_only_ever_sees_clean_text() -> None:
    seen: list[str] = []

    def fn(texts: list[str]) -> list[list[float]]:
        for text in texts:
            text.encode("utf-8")  # what an HTTP client does with it: raises on a surrogate
            seen.append(text)
        return [[1.0, float(len(t))] for t in texts]

    embedder = CallableEmbedder(fn, model_id="strict-utf8")
    assert embedder.embed(BAD).shape == (4, 2)
    assert (await embedder.aembed(BAD)).shape == (4, 2)
    assert seen == REPAIRED * 2


@pytest.mark.parametrize("texts", [None, 42, [b"bytes"], [None]])
def test_what_is_not_text_gets_one_clear_type_error(minilm: MiniLMEmbedder, texts: object) -> None:
    with pytest.raises(TypeError, match="str"):
        minilm.embed(texts)  # type: ignore[arg-type]


def test_a_megabyte_query_is_cut_to_the_model_window_first(minilm: MiniLMEmbedder) -> None:
    sentence = "The invoice for March was paid twice by mistake. "
    huge = sentence * (1_000_000 // len(sentence))
    head = bound_text(huge, minilm.max_length)
    assert len(head) <= minilm.max_length * 32 < len(huge)
    # the model keeps max_length tokens either way: the vector is the same
    full = minilm.embed([huge[:20_000]])
    assert np.allclose(minilm.embed([huge]), full, atol=1e-5)


def test_whitespace_padding_does_not_push_words_out_of_the_window(
    minilm: MiniLMEmbedder,
) -> None:
    padded = ("refund " + " " * 100) * 5_000  # 535 KB, 5,000 words
    assert np.allclose(
        minilm.embed([padded]), minilm.embed([("refund " * 5_000)[:20_000]]), atol=1e-5
    )


def test_ten_megabytes_of_bad_text_embed(minilm: MiniLMEmbedder) -> None:
    huge = ("tenant \x00 acme \udce9 " * 600_000)[:10_000_000]
    vector = minilm.embed([huge])
    assert vector.shape == (1, minilm.dim) and np.isfinite(vector).all()
