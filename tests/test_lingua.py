"""LLMLinguaCompressor on tiny random models built here: it tests the pipeline, not quality.

No model hub is reachable, so each test model is a randomly initialised BERT (LLMLingua-2)
or GPT-2 (LongLLMLingua) saved with ``save_pretrained`` under the directory name LLMLingua
requires, with a tokenizer built offline from a character vocabulary.
"""

from __future__ import annotations

import asyncio
import importlib.util
import string
from pathlib import Path

import pytest

from graphthrift.compress import Compressor, InvalidCompressionTarget
from graphthrift.errors import MissingExtra

CHUNKS = [
    "The Golden Gate Bridge opened on May 27, 1937 and cost $35 million. It is painted "
    "International Orange. Engineers call it a suspension bridge.",
    "Bananas are yellow when ripe. They grow in bunches on large herbaceous plants.",
    "",
]
QUESTION = "When did the Golden Gate Bridge open?"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random BERT token classifier named like LLMLingua-2's multilingual model."""
    pytest.importorskip("llmlingua")
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("lingua") / "tiny-bert-base-multilingual-cased"
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    wordpiece = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    wordpiece.decoder = decoders.WordPiece(prefix="##")
    BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=False,
    ).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
    )
    BertForTokenClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random GPT-2 with a byte-level BPE trained here on a few sentences."""
    pytest.importorskip("llmlingua")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    path = tmp_path_factory.mktemp("lingua") / "tiny-gpt2"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([*CHUNKS, QUESTION] * 5, trainer)
    GPT2TokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    ).save_pretrained(path)
    torch.manual_seed(0)
    eos = bpe.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=1024,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from graphthrift.compress import lingua

    real = importlib.util.find_spec
    monkeypatch.setattr(
        lingua.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llmlingua" else real(name, *a),
    )
    with pytest.raises(MissingExtra, match=r"pip install 'graphthrift\[lingua\]'"):
        lingua.LLMLinguaCompressor("x/bert-base-multilingual-cased")


def test_llmlingua2_rejects_a_model_name_it_cannot_handle() -> None:
    pytest.importorskip("llmlingua")
    from graphthrift.compress import LinguaModelError, LLMLinguaCompressor

    with pytest.raises(LinguaModelError, match="bert-base-multilingual-cased"):
        LLMLinguaCompressor("/models/my-tiny-bert")
    with pytest.raises(LinguaModelError, match="causal LM"):
        LLMLinguaCompressor(mode="longllmlingua")


def test_unloadable_model_raises_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("llmlingua")
    from graphthrift.compress import LinguaModelError, LLMLinguaCompressor

    c = LLMLinguaCompressor(tmp_path / "empty-bert-base-multilingual-cased", target_ratio=0.5)
    with pytest.raises(LinguaModelError, match="save_pretrained"):
        c.compress(QUESTION, CHUNKS)


def test_llmlingua2_pipeline_keeps_alignment_and_budget(bert_dir: Path) -> None:
    from graphthrift.compress import LLMLinguaCompressor

    c = LLMLinguaCompressor(bert_dir, target_ratio=0.5)
    assert isinstance(c, Compressor)
    result = c.compress(QUESTION, CHUNKS)
    assert len(result.texts) == len(CHUNKS)
    assert result.texts[2] == ""  # the empty chunk stays empty
    assert result.kept_tokens <= result.budget < result.original_tokens
    assert result.compressor == "llmlingua2"
    # Digits are forced through by default.
    assert "1937" in result.texts[0]
    # A budget of everything leaves the text alone without running the model.
    full = c.compress(QUESTION, CHUNKS, target_ratio=1.0)
    assert full.texts[:2] == tuple(t.strip() for t in CHUNKS[:2])


def test_llmlingua2_max_tokens_is_a_hard_cap(bert_dir: Path) -> None:
    from graphthrift.compress import LLMLinguaCompressor

    c = LLMLinguaCompressor(bert_dir, max_tokens=7)
    result = c.compress(QUESTION, CHUNKS)
    assert result.kept_tokens <= 7
    with pytest.raises(InvalidCompressionTarget):
        c.compress(QUESTION, CHUNKS, target_ratio=0)


def test_llmlingua2_async_matches_sync(bert_dir: Path) -> None:
    from graphthrift.compress import LLMLinguaCompressor

    c = LLMLinguaCompressor(bert_dir, target_ratio=0.5)
    sync = c.compress(QUESTION, CHUNKS)
    result = asyncio.run(c.acompress(QUESTION, CHUNKS))
    assert result.texts == sync.texts


def test_longllmlingua_pipeline_on_a_long_context(gpt2_dir: Path) -> None:
    """Longer than LLMLingua's 200-token window, so its KV-cache slicing runs too."""
    from graphthrift.compress import LLMLinguaCompressor

    c = LLMLinguaCompressor(gpt2_dir, mode="longllmlingua", target_ratio=0.3)
    chunks = [CHUNKS[0] * 20, CHUNKS[1] * 20, CHUNKS[1]]
    result = c.compress(QUESTION, chunks)
    assert len(result.texts) == 3
    assert 0 < result.kept_tokens <= result.budget
    assert result.compressor == "longllmlingua"
    no_question = c.compress("", chunks, max_tokens=20)
    assert no_question.kept_tokens <= 20


def test_loading_leaves_the_global_random_state_alone(bert_dir: Path) -> None:
    import random

    from graphthrift.compress import LLMLinguaCompressor

    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    LLMLinguaCompressor(bert_dir, target_ratio=0.5).compress(QUESTION, CHUNKS)  # loads the model
    assert random.random() == expected


def test_shared_prompt_compressor_is_reused(bert_dir: Path) -> None:
    from graphthrift.compress import LLMLinguaCompressor

    first = LLMLinguaCompressor(bert_dir, target_ratio=0.5)
    second = LLMLinguaCompressor(prompt_compressor=first.prompt_compressor, target_ratio=0.5)
    assert second.compress(QUESTION, CHUNKS).texts == first.compress(QUESTION, CHUNKS).texts
