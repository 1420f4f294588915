"""ExtractiveCompressor: sentence splitting, budgets, relevance, bad input, the ledger, the bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from graphthrift.compress import (
    CompressionResult,
    Compressor,
    ExtractiveCompressor,
    InvalidCompressionTarget,
    compression_record,
    split_sentences,
)
from graphthrift.embed import CallableEmbedder
from graphthrift.text import count_text

BRIDGE = (
    "The Golden Gate Bridge is a suspension bridge in California. It opened on May 27, "
    "1937, after four years of work. The bridge is painted International Orange."
)
BANANAS = "Bananas are yellow when ripe. They grow in bunches. Monkeys are said to like them."
CARS = "Cars need fuel or electricity. Many cities restrict traffic in their centres."


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


# -- splitting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pi is 3.14159. Euler is 2.718.", ["Pi is 3.14159.", "Euler is 2.718."]),
        ("Upgrade to v2.1.0 now. It fixes ERR-42.", ["Upgrade to v2.1.0 now.", "It fixes ERR-42."]),
        (
            "See https://example.org/a.b?x=1. Then call api.example.com.",
            ["See https://example.org/a.b?x=1.", "Then call api.example.com."],
        ),
        ("Dr. Watson met Mr. Holmes. They talked.", ["Dr. Watson met Mr. Holmes.", "They talked."]),
        ("J. R. R. Tolkien wrote it. Fans agree.", ["J. R. R. Tolkien wrote it.", "Fans agree."]),
        ("Use e.g. a hammer. Or approx. 5 nails.", ["Use e.g. a hammer.", "Or approx. 5 nails."]),
        ("See No. 5 and Fig. 3 for details.", ["See No. 5 and Fig. 3 for details."]),
        ("Wait... and then? Yes!", ["Wait... and then?", "Yes!"]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        (
            "東京は日本の首都です。人口は約1400万人です。",
            ["東京は日本の首都です。", "人口は約1400万人です。"],
        ),
        ("北京是中国的首都！你去过吗？", ["北京是中国的首都！", "你去过吗？"]),
        ("यह एक वाक्य है। यह दूसरा है।", ["यह एक वाक्य है।", "यह दूसरा है।"]),
        ("هل هذا سؤال؟ نعم.", ["هل هذا سؤال؟", "نعم."]),
        ("Der Preis ist 3,50 €. Das ist günstig.", ["Der Preis ist 3,50 €.", "Das ist günstig."]),
        ("- item one\n- item two\n\nNew paragraph", ["- item one", "- item two", "New paragraph"]),
        ("", []),
        ("   \n  ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


@settings(deadline=None)  # a stalled example is not a failure (no test asserts timings)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n3。,xy")), max_size=200))
def test_split_sentences_keeps_every_character_in_order(text: str) -> None:
    spans = split_sentences(text)
    last = 0
    for a, b in spans:
        assert last <= a < b <= len(text)
        assert text[last:a].strip() == ""  # only whitespace between sentences
        assert not text[a].isspace() and not text[b - 1].isspace()
        last = b
    assert text[last:].strip() == ""


# -- budgets ------------------------------------------------------------------------------------

chunk_text = st.lists(
    st.sampled_from(
        [
            "The bridge opened in 1937.",
            "It cost $35 million.",
            "Version v2.1.0 fixed ERR-42.",
            "Bananas are yellow.",
            "東京は大きい。",
            "Ceci est une phrase.",
            "Short.",
            "\n",
            "A long clause, with commas, semicolons; and more words than most sentences have "
            "in them, to make the splitter work for its living, again and again and again.",
        ]
    ),
    max_size=8,
).map(" ".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(chunk_text, max_size=5),
    ratio=st.one_of(st.none(), st.floats(0.01, 1.0)),
    cap=st.one_of(st.none(), st.integers(0, 80)),
    scope=st.sampled_from(["global", "chunk"]),
)
def test_output_never_exceeds_the_budget(
    chunks: list[str], ratio: float | None, cap: int | None, scope: Any
) -> None:
    c = ExtractiveCompressor(target_ratio=ratio, max_tokens=cap, embedder=False, scope=scope)
    result = c.compress("When did the bridge open?", chunks)
    assert len(result.texts) == len(chunks)
    assert result.kept_tokens == sum(count_text(t) for t in result.texts)
    assert result.kept_tokens <= result.budget
    if cap is not None:
        assert result.kept_tokens <= cap
    if ratio is not None:
        assert result.kept_tokens <= math.floor(ratio * result.original_tokens + 1e-9)
    for original, kept in zip(chunks, result.texts, strict=True):
        words = set(original.split())
        assert all(w in words for w in kept.split())  # nothing rewritten, nothing invented


def test_ratio_one_keeps_everything_verbatim() -> None:
    c = ExtractiveCompressor(target_ratio=1.0, embedder=False)
    result = c.compress("anything?", [BRIDGE, BANANAS])
    assert result.texts == (BRIDGE, BANANAS)
    assert result.ratio == 1.0 and result.removed_tokens == 0
    padded = c.compress("anything?", ["  " + BANANAS + "\n"])
    assert padded.texts == (BANANAS,)  # only surrounding whitespace goes


# -- relevance ----------------------------------------------------------------------------------


def test_keeps_the_answer_and_drops_irrelevant_chunks() -> None:
    c = ExtractiveCompressor(target_ratio=0.5, embedder=False)
    result = c.compress("When did the Golden Gate Bridge open?", [BANANAS, CARS, BRIDGE])
    assert "May 27, 1937" in result.texts[2]
    assert result.texts[0] == result.texts[1] == ""  # nothing relevant: dropped whole
    assert result.indices == (2,)
    assert result.ratio >= 2
    assert result.kept_sentences[2]
    kept = sentences(BRIDGE)
    assert all(kept[i] in result.texts[2] for i in result.kept_sentences[2])


def test_scope_chunk_trims_every_chunk_on_its_own() -> None:
    c = ExtractiveCompressor(target_ratio=0.5, embedder=False, scope="chunk")
    result = c.compress("When did the Golden Gate Bridge open?", [BANANAS, CARS, BRIDGE])
    assert all(result.texts)
    assert all(
        k < o for k, o in zip(result.chunk_kept_tokens, result.chunk_original_tokens, strict=True)
    )


def test_identifiers_and_numbers_survive_intact() -> None:
    doc = (
        "The service returns several errors. ERR-41 means the disk is full. ERR-42 means "
        "the token in /etc/app/config.yaml expired after 3.5 hours. Upgrade to v2.1.0 to "
        "fix it. Contact support@example.com for help. The weather was nice that day."
    )
    c = ExtractiveCompressor(max_tokens=30, embedder=False)
    result = c.compress("What does ERR-42 mean?", [doc])
    assert (
        "ERR-42 means the token in /etc/app/config.yaml expired after 3.5 hours." in result.texts[0]
    )


def test_answer_type_prefers_a_number_for_how_many() -> None:
    doc = (
        "Kuechly led the team in tackles this season. He registered 118 tackles. "
        "Kuechly was also praised by his coaches for his leadership in the team."
    )
    c = ExtractiveCompressor(max_tokens=8, embedder=False)
    assert c.compress("How many tackles did Kuechly register?", [doc]).texts == (
        "He registered 118 tackles.",
    )


@pytest.mark.parametrize(
    ("question", "chunks", "needle"),
    [
        (
            "东京的人口是多少？",
            ["北京是中国的首都。长城很长。", "东京是日本的首都。东京的人口约为1400万。"],
            "1400万",
        ),
        (
            "Wann wurde die Brücke eröffnet?",
            [
                "Die Brücke wurde 1937 eröffnet. Sie ist rot. Viele Touristen kommen.",
                "Bananen sind gelb. Affen mögen sie.",
            ],
            "1937",
        ),
        (
            "Какой город является столицей России?",
            ["Москва является столицей России. Там живёт много людей.", "Бананы жёлтые."],
            "Москва",
        ),
    ],
)
def test_non_english(question: str, chunks: list[str], needle: str) -> None:
    result = ExtractiveCompressor(target_ratio=0.5, embedder=False).compress(question, chunks)
    assert needle in result.text()
    assert result.kept_tokens <= result.budget


# -- bad input ----------------------------------------------------------------------------------


def test_empty_input() -> None:
    c = ExtractiveCompressor(embedder=False)
    empty = c.compress("Who?", [])
    assert empty.texts == () and empty.ratio == 1.0 and empty.kept_fraction == 1.0
    blank = c.compress("Who?", ["", "   \n"])
    assert blank.texts == ("", "") and blank.original_tokens == 0
    no_question = c.compress("", [BRIDGE, BANANAS])
    assert no_question.kept_tokens <= no_question.budget
    assert no_question.texts[0].startswith("The Golden Gate Bridge")  # lead sentences


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, 3, float("nan"), True, "0.5"])
def test_target_ratio_outside_0_1_is_an_error(bad: Any) -> None:
    with pytest.raises(InvalidCompressionTarget) as info:
        ExtractiveCompressor(target_ratio=bad)
    assert isinstance(info.value, ValueError)
    c = ExtractiveCompressor(embedder=False)
    with pytest.raises(InvalidCompressionTarget):
        c.compress("q", [BRIDGE], target_ratio=bad)


def test_ratio_error_suggests_the_kept_fraction() -> None:
    with pytest.raises(InvalidCompressionTarget, match=r"target_ratio=0\.333"):
        ExtractiveCompressor(target_ratio=3)


def test_bad_max_tokens_and_zero_budget() -> None:
    with pytest.raises(InvalidCompressionTarget):
        ExtractiveCompressor(max_tokens=-1)
    result = ExtractiveCompressor(max_tokens=0, embedder=False).compress("q?", [BRIDGE])
    assert result.texts == ("",) and result.kept_tokens == 0 and result.ratio == math.inf


def test_non_text_chunks_are_rejected_clearly() -> None:
    c = ExtractiveCompressor(embedder=False)
    with pytest.raises(TypeError, match=r"chunks\[1\] is int"):
        c.compress("q", ["text", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="wrap it"):
        c.compress("q", BRIDGE)
    with pytest.raises(TypeError, match="question must be a str"):
        c.compress(None, [BRIDGE])  # type: ignore[arg-type]


def test_huge_single_sentence_is_cut_at_word_boundaries() -> None:
    words = [f"word{i}" for i in range(3000)]
    words[2500] = "needle-7.5"
    huge = " ".join(words)  # ~9,000 tokens, no full stop anywhere
    c = ExtractiveCompressor(max_tokens=200, embedder=False)
    result = c.compress("Where is needle-7.5?", [huge])
    assert 0 < result.kept_tokens <= 200
    assert "needle-7.5" in result.texts[0]
    assert set(result.texts[0].split()) <= set(words)


def test_huge_unspaced_cjk_run_is_cut_without_splitting_numbers() -> None:
    run = "東京" * 400 + "2024年" + "大阪" * 400  # one 'sentence', no punctuation
    result = ExtractiveCompressor(max_tokens=120, embedder=False).compress("2024年?", [run])
    assert 0 < result.kept_tokens <= 120
    assert "2024年" in result.texts[0]


def test_env_configures_the_default_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHTHRIFT_COMPRESS_TARGET_RATIO", "0.5")
    assert ExtractiveCompressor(embedder=False).target_ratio == 0.5
    monkeypatch.setenv("GRAPHTHRIFT_COMPRESS_TARGET_RATIO", "2")
    with pytest.raises(InvalidCompressionTarget):
        ExtractiveCompressor(embedder=False)


# -- the semantic feature -----------------------------------------------------------------------


def _topic_embedder(calls: list[list[str]]) -> CallableEmbedder:
    """A transparent embedder: one axis per topic word, so cosine is topical overlap."""
    topics = ["fruit|banana|ripe|yellow|monkey|ape", "bridge|span|opened|traffic", "car|fuel"]

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[len(re.findall(t, x.lower())) + 1e-3 for t in topics] for x in texts]

    return CallableEmbedder(embed, model_id="topics")


def test_no_overlap_question_uses_the_embedder() -> None:
    calls: list[list[str]] = []
    c = ExtractiveCompressor(max_tokens=12, embedder=_topic_embedder(calls))
    result = c.compress("Which fruit do apes prefer?", [CARS, BANANAS])
    assert calls, "the embedder was not consulted"
    assert result.details["semantic"] is True
    assert result.texts == ("", "Bananas are yellow when ripe.")


def test_auto_mode_skips_the_embedder_when_lexical_evidence_is_strong() -> None:
    calls: list[list[str]] = []
    c = ExtractiveCompressor(target_ratio=0.3, embedder=_topic_embedder(calls))
    c.compress("When did the Golden Gate Bridge open?", [BANANAS, BRIDGE])
    assert calls == []
    disabled = ExtractiveCompressor(embedder=False)
    assert disabled.embedder is None and disabled.semantic == "never"


def test_semantic_always_reranks_a_shortlist_and_async_matches() -> None:
    calls: list[list[str]] = []
    c = ExtractiveCompressor(
        target_ratio=0.3, embedder=_topic_embedder(calls), semantic="always", shortlist=3
    )
    sync = c.compress("When did the Golden Gate Bridge open?", [BANANAS, BRIDGE])
    assert len(calls) == 1 and len(calls[0]) == 4  # 3 sentences + the question
    result = asyncio.run(c.acompress("When did the Golden Gate Bridge open?", [BANANAS, BRIDGE]))
    assert len(calls[1]) == 3  # the question's vector is cached
    assert result.texts == sync.texts and result.details["semantic"]


def test_default_embedder_is_minilm_and_loads_only_when_needed() -> None:
    c = ExtractiveCompressor(max_tokens=12)
    assert c._embedder is None
    c.compress("When did the Golden Gate Bridge open?", [BRIDGE])
    assert c._embedder is None  # strong lexical evidence: MiniLM never loaded
    result = c.compress("Which fruit do apes prefer?", [CARS, BANANAS])
    assert c.embedder.model_id.startswith("all-MiniLM")
    assert result.details["semantic"] and result.texts[0] == "" and result.texts[1]


def test_async_is_the_same_implementation() -> None:
    c = ExtractiveCompressor(target_ratio=0.4, embedder=False)
    chunks = [BANANAS, CARS, BRIDGE]
    sync = c.compress("When did the bridge open?", chunks)
    result = asyncio.run(c.acompress("When did the bridge open?", chunks))
    assert (result.texts, result.kept_tokens) == (sync.texts, sync.kept_tokens)
    assert isinstance(c, Compressor)


# -- the ledger ---------------------------------------------------------------------------------


def test_compression_record_fields() -> None:
    result = CompressionResult(texts=("a", ""), original_tokens=100, kept_tokens=30, budget=33)
    record = compression_record(
        result, model="gpt-4o-mini", tags={"tenant_id": 7, "node": "compress", "team": "x"}
    )
    assert (record.kind, record.layer) == ("compression", "compression")
    assert (record.input_tokens, record.saved_tokens) == (100, 70)
    assert (record.tenant_id, record.node, record.model) == ("7", "compress", "gpt-4o-mini")
    assert record.extra is not None and record.extra["tags"] == {"team": "x"}
    assert record.extra["kept_tokens"] == 30


def test_compressor_writes_its_saving_to_the_ledger(ledger: Any, tenant: str) -> None:
    c = ExtractiveCompressor(
        target_ratio=0.3,
        embedder=False,
        model="gpt-4o-mini",
        ledger=ledger,
        tags={"tenant_id": tenant, "feature": "rag"},
    )
    result = c.compress(
        "When did the Golden Gate Bridge open?", [BANANAS, BRIDGE], tags={"node": "retrieve"}
    )
    asyncio.run(c.acompress("When did it open?", [BRIDGE], tags={"node": "async"}))
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert len(rows) == 2
    row = next(r for r in rows if r["node"] == "retrieve")
    assert row["kind"] == "compression" and row["layer"] == "compression"
    assert row["saved_tokens"] == result.removed_tokens > 0
    assert row["input_tokens"] == result.original_tokens
    assert row["feature"] == "rag" and row["model"] == "gpt-4o-mini"
    assert row["saved_usd"] is not None and row["saved_usd"] > 0  # priced by the ledger
    report = ledger.report(by=["layer"], tenant_id=tenant)
    assert report[0]["saved_tokens"] == sum(r["saved_tokens"] for r in rows)


# -- the benchmark's JSON -----------------------------------------------------------------------


def _tiny_squad(path: Path) -> Path:
    paragraphs = [
        (BRIDGE, "When did the Golden Gate Bridge open?", "May 27, 1937"),
        (BANANAS, "What colour are ripe bananas?", "yellow"),
        (CARS, "What do cars need?", "fuel or electricity"),
    ]
    data = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": c,
                        "qas": [
                            {
                                "id": str(i),
                                "question": q,
                                "answers": [{"text": a, "answer_start": c.index(a)}],
                            }
                        ],
                    }
                    for i, (c, q, a) in enumerate(paragraphs)
                ],
            }
        ]
    }
    path.write_text(json.dumps(data))
    return path


def test_bench_compress_json_keys(tmp_path: Path) -> None:
    from graphthrift.bench import compress as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "compress.json"
    args = parser.parse_args(["--squad", str(_tiny_squad(tmp_path / "q.json")), "--no-semantic"])
    args.json, args.quick = str(out), True
    figures = bench.run(args, Console(file=open(tmp_path / "log.txt", "w")))  # noqa: SIM115
    assert json.loads(out.read_text())["n"] == figures["n"] == 3
    for key in (
        "compressor",
        "ratio",
        "answer_retention",
        "ms_per_1k_tokens",
        "baselines",
        "curve",
        "settings",
        "peak_python_memory_mib",
    ):
        assert key in figures
    assert set(figures["baselines"]) == {"head", "random", "bm25"}
    assert {"ratio", "answer_retention"} <= set(figures["baselines"]["bm25"])
    assert figures["curve"][0]["extractive-lexical"]["answer_retention"] >= 0
    assert set(figures["settings"]) == {"single", "multi", "long"}


def test_bench_compress_skips_cleanly_without_data(tmp_path: Path) -> None:
    from graphthrift.bench import compress as bench

    args = argparse.Namespace(squad=str(tmp_path / "missing.json"), json=None, quick=True)
    figures = bench.run(args, Console(file=open(tmp_path / "log.txt", "w")))  # noqa: SIM115
    assert "skipped" in figures and "--squad" in figures["skipped"]


def test_answer_type_keeps_the_number_a_paraphrased_question_asks_for() -> None:
    """'How long do I have to return an item?' shares no word with 'The refund window is 14
    days': in a chunk about the question, the sentence with the duration is kept when the
    budget has room (a composed scenario hedged on the dropped answer)."""
    docs = [
        "Refund policy. The refund window at acme is 14 days from delivery. Refunds go back to "
        "the original card. Gift cards are not refundable. Our warehouse staff inspect every "
        "returned parcel before approval.",
        "Shipping. Standard parcels at acme arrive within 3 business days. Express parcels "
        "arrive the next day. We ship from two warehouses.",
    ]
    result = ExtractiveCompressor(embedder=False, target_ratio=0.6).compress(
        "How long do I have to return an item?", docs
    )
    assert "14 days" in result.text()
    assert result.kept_tokens <= result.budget
