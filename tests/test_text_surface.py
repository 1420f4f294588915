"""The packages of issue 15's text work: one copy of the lexical features, and lazy tables,
``__all__`` and the ``TYPE_CHECKING`` stubs that agree."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGES = ["compress", "embed", "history", "summarize", "text"]


@pytest.mark.parametrize("name", PACKAGES)
def test_lazy_table_all_and_stubs_agree(name: str) -> None:
    package = importlib.import_module(f"graphthrift.{name}")
    table = package._EXPORTS
    assert package.__all__ == sorted(table)
    tree = ast.parse(Path(inspect.getfile(package)).read_text(encoding="utf-8"))
    stubs = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for inner in node.body
        if isinstance(inner, ast.ImportFrom)
        for alias in inner.names
    }
    assert stubs == set(table)
    for export, module in table.items():
        defining = importlib.import_module(module, package.__name__)
        assert getattr(package, export) is getattr(defining, export)


def test_compressor_and_summarizer_share_one_copy_of_the_text_features() -> None:
    from graphthrift.compress import scoring
    from graphthrift.summarize import extractive, facts, features
    from graphthrift.text import lexical, sentences

    assert scoring.index_terms is lexical.index_terms
    assert scoring.DIGIT is facts.DIGIT is features.DIGIT is lexical.DIGIT
    assert extractive.split_chat_sentences is sentences.split_chat_sentences
    for module in (scoring, extractive, facts, features):
        source = inspect.getsource(module)
        assert 're.compile(r"\\d")' not in source  # no private copy of a shared pattern
        assert "def _stem" not in source and "def _terms" not in source


def test_old_module_paths_keep_their_public_names() -> None:
    import graphthrift.compress.compressor as compressor
    import graphthrift.history.pruner as pruner
    import graphthrift.summarize.summarizer as summarizer
    from graphthrift import errors

    for module in (compressor, pruner, summarizer):
        for name in module.__all__:
            assert getattr(module, name) is not None
    assert compressor.InvalidCompressionTarget is errors.InvalidCompressionTarget
    assert pruner.HistoryConfigError is errors.HistoryConfigError
    assert issubclass(errors.HistoryConfigError, errors.ConfigError)
    assert issubclass(errors.InvalidCompressionTarget, errors.ConfigError)
    err = errors.InvalidCompressionTarget("target_ratio", 3, "in (0, 1]")
    assert (err.name, err.value, err.allowed, err.rule) == (
        "target_ratio",
        3,
        "in (0, 1]",
        "in (0, 1]",
    )
    assert "target_ratio=0.333" in str(err)
