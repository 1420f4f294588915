"""Query-aware compression of retrieved chunks before the expensive call.

Retrieved chunks often carry one relevant sentence in three paragraphs of noise. The
`ExtractiveCompressor` keeps the sentences most likely to answer the question, in their
original order and verbatim, up to a token budget. It needs no torch and no LLM: every
sentence is scored lexically (BM25 over the request's own sentences, exact matches of the
question's numbers and identifiers, the answer type the question asks for, and how
much of the question the sentence's chunk covers). An embedder is consulted only for the
question and a short list of sentences, and by default only when the lexical evidence is
weak, because embedding every sentence costs more than the 15 ms per 1,000 tokens we aim for.

Two ways to size the output, both measured in tokens of the downstream ``model``:

- ``target_ratio``: the *kept fraction*, in (0, 1]: kept tokens / original tokens.
  (``CompressionResult.ratio`` and the benchmark report the inverse, original / kept.)
- ``max_tokens``: an absolute budget. With both, the smaller budget wins.

The output never exceeds the budget: sentences are kept whole or not at all, and a
sentence longer than ``max_sentence_tokens`` is first cut into pieces at clause or word
boundaries (never inside a number, an identifier or a URL).

Example:
    >>> c = ExtractiveCompressor(target_ratio=0.4, embedder=False)
    >>> r = c.compress("When was the bridge opened?", [
    ...     "The bridge opened in 1932. It is painted red. Tourists like it.",
    ...     "Bananas are yellow. They grow in bunches.",
    ... ])
    >>> r.texts[0]
    'The bridge opened in 1932.'
"""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from graphthrift.compress.base import BaseCompressor
from graphthrift.compress.budget import resolve_budget
from graphthrift.compress.result import CompressionResult, Compressor
from graphthrift.compress.savings import (
    book_savings,
    compression_record,
    defer_saving,
    drop_savings,
    flush_savings,
)
from graphthrift.compress.scoring import (
    Unit,
    blend,
    count_many,
    cut_long,
    lead_scores,
    lexical_scores,
    normalise_scores,
)
from graphthrift.errors import InvalidCompressionTarget
from graphthrift.kernel import reject_conflicts
from graphthrift.text.sentences import split_sentences
from graphthrift.text.tokens import encoding_name_for, get_encoding

# The names this module held before the package was split by idea stay importable here.
__all__ = [
    "BaseCompressor",
    "CompressionResult",
    "Compressor",
    "ExtractiveCompressor",
    "InvalidCompressionTarget",
    "book_savings",
    "build_compressor",
    "compression_record",
    "defer_saving",
    "drop_savings",
    "flush_savings",
    "normalise_answer_text",
    "resolve_budget",
    "split_sentences",
]

Scope = Literal["global", "chunk"]
Semantic = Literal["auto", "always", "never"]


@dataclass(slots=True)
class _Plan:
    """Everything ``compress`` computes before (optionally) asking the embedder."""

    chunks: list[str]
    units: list[Unit]
    chunk_tokens: list[int]
    budget: int
    lexical: np.ndarray
    embed_rows: list[int]
    question: str
    details: dict[str, Any]
    encoding: Any


class ExtractiveCompressor(BaseCompressor):
    """The default compressor: keeps the sentences that answer the question, verbatim.

    Sentences are scored by BM25 against the question (IDF over this request's
    sentences), exact matches of the question's numbers and identifiers, whether
    they hold what the question asks for (a number for "how many", a name for "who"),
    their neighbours' scores and their chunk's coverage of the question. The best are
    kept in original order until the budget is full, so a chunk with nothing relevant is
    dropped whole (``scope="global"``) or trimmed on its own (``scope="chunk"``).

    Args:
        target_ratio: kept fraction in (0, 1] (kept tokens / original tokens); env
            ``GRAPHTHRIFT_COMPRESS_TARGET_RATIO``; default 1/3 when neither this nor
            ``max_tokens`` is given.
        max_tokens: absolute budget in tokens; env ``GRAPHTHRIFT_COMPRESS_MAX_TOKENS``.
        embedder: ``None`` uses ``graphthrift.embed.embedders.default_embedder()`` (loaded on first
            need); ``False`` disables the semantic feature (pure lexical, fastest); or any
            object ``graphthrift.embed.embedders.as_embedder`` accepts (LangChain / LlamaIndex
            embeddings, a callable).
        semantic: when to consult the embedder: ``"auto"`` (only when the lexical evidence
            is weak, see ``semantic_below``: a paraphrased question or one in another
            wording), ``"always"`` (re-rank the lexical shortlist on every call: the question
            plus ``shortlist`` sentences through the embedder, far above the 15 ms per 1,000
            tokens the lexical path takes), or ``"never"``.
        semantic_below: in ``"auto"`` mode, consult the embedder when the best sentence
            holds less than this share of the question's IDF weight (0.1: almost no overlap;
            on xquad_en, 0.3% to 2.7% of questions depending on the setting).
        shortlist: sentences re-ranked by the embedder; with no lexical overlap at all,
            up to ``max_embed`` sentences are embedded instead.
        scope: ``"global"`` shares one budget across chunks (irrelevant chunks vanish);
            ``"chunk"`` gives each chunk its share of the budget.
        model: the downstream model: its tokenizer counts tokens and the ledger prices
            the saving at its input price.
        max_sentence_tokens: longer sentences are cut at clause/word boundaries first.
        ledger / tags: write each compression to this ledger with these tags.

    Example:
        >>> c = ExtractiveCompressor(max_tokens=16, embedder=False)
        >>> c.compress("In which year was Hamlet written?", ["Hamlet is a tragedy. It was "
        ...     "written around 1600. It is long.", "Paris is in France."]).texts
        ('Hamlet is a tragedy. It was written around 1600.', '')
    """

    name = "extractive"

    def __init__(
        self,
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        embedder: Any = None,
        model: str | None = None,
        *,
        semantic: Semantic = "auto",
        semantic_below: float = 0.1,
        shortlist: int = 8,
        max_embed: int = 64,
        scope: Scope = "global",
        max_sentence_tokens: int = 96,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            target_ratio=target_ratio,
            max_tokens=max_tokens,
            model=model,
            ledger=ledger,
            tags=tags,
        )
        if semantic not in ("auto", "always", "never"):
            raise ValueError(f"semantic must be 'auto', 'always' or 'never', got {semantic!r}")
        if scope not in ("global", "chunk"):
            raise ValueError(f"scope must be 'global' or 'chunk', got {scope!r}")
        for key, value in (
            ("shortlist", shortlist),
            ("max_embed", max_embed),
            ("max_sentence_tokens", max_sentence_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        self.semantic: Semantic = "never" if embedder is False else semantic
        if not 0 <= semantic_below <= 1:
            raise ValueError(f"semantic_below must be in [0, 1], got {semantic_below!r}")
        self.semantic_below = float(semantic_below)
        self.shortlist = shortlist
        self.max_embed = max_embed
        self.scope: Scope = scope
        self.max_sentence_tokens = max_sentence_tokens
        self._embedder_arg = None if embedder is False else embedder
        self._embedder: Any = None
        self._lock = threading.Lock()
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def embedder(self) -> Any:
        """The embedder in use (resolved on first need), or None when disabled."""
        if self.semantic == "never":
            return None
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from graphthrift.embed.embedders import as_embedder, default_embedder

                    arg = self._embedder_arg
                    self._embedder = default_embedder() if arg is None else as_embedder(arg)
        return self._embedder

    # -- sync / async share everything but the embedder call --------------------------------

    def _run(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        plan = self._plan(question, chunks, target_ratio, max_tokens)
        vectors = None
        if plan.embed_rows:
            vectors = self._vectors(plan, self.embedder.embed([*self._embed_texts(plan)]))
        return self._select(plan, vectors)

    async def _arun(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        plan = self._plan(question, chunks, target_ratio, max_tokens)
        vectors = None
        if plan.embed_rows:
            embedded = await self.embedder.aembed([*self._embed_texts(plan)])
            vectors = self._vectors(plan, embedded)
        return self._select(plan, vectors)

    # -- planning: split, count, score lexically ---------------------------------------------

    def _plan(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> _Plan:
        encoding = get_encoding(encoding_name_for(self.model)[0])
        chunk_tokens = [len(encoding.encode_ordinary(c)) if c.strip() else 0 for c in chunks]
        original = sum(chunk_tokens)
        budget = resolve_budget(original, target_ratio, max_tokens)
        units: list[Unit] = []
        texts: list[str] = []
        for ci, chunk in enumerate(chunks):
            if not chunk_tokens[ci]:
                continue
            spans = self._pieces(chunk, split_sentences(chunk), encoding)
            for k, (a, b) in enumerate(spans):
                units.append(Unit(ci, k, a, b, 0))
                texts.append(chunk[a:b])
        for unit, n in zip(units, count_many(encoding, texts), strict=True):
            unit.tokens = n
        details: dict[str, Any] = {"sentences": len(units), "semantic": False}
        lexical, coverage = lexical_scores(question, units, texts)
        details["coverage"] = round(coverage, 4)
        plan = _Plan(chunks, units, chunk_tokens, budget, lexical, [], question, details, encoding)
        if budget >= original or not units:
            return plan  # nothing to choose: everything fits, or nothing is there
        plan.embed_rows = self._rows_to_embed(plan)
        return plan

    def _pieces(
        self, chunk: str, spans: list[tuple[int, int]], encoding: Any
    ) -> list[tuple[int, int]]:
        """Cut sentences over ``max_sentence_tokens`` into pieces at clause or word breaks."""
        limit = self.max_sentence_tokens
        out: list[tuple[int, int]] = []
        for a, b in spans:
            if b - a <= limit * 2 or len(encoding.encode_ordinary(chunk[a:b])) <= limit:
                out.append((a, b))
                continue
            out.extend(cut_long(chunk, a, b, limit, encoding))
        return out

    def _rows_to_embed(self, plan: _Plan) -> list[int]:
        """Which units the embedder should see; empty when lexical evidence suffices."""
        if self.semantic == "never" or not plan.question.strip():
            return []
        top = float(plan.lexical.max()) if len(plan.lexical) else 0.0
        weak = top <= 0 or plan.details.get("coverage", 0.0) < self.semantic_below
        if self.semantic == "auto" and not weak:
            return []
        if top <= 0:
            order = range(min(len(plan.units), self.max_embed))
            return list(order)
        order_arr = np.argsort(-plan.lexical, kind="stable")
        return [int(i) for i in order_arr[: self.shortlist]]

    def _embed_texts(self, plan: _Plan) -> list[str]:
        texts = [
            plan.chunks[plan.units[i].chunk][plan.units[i].start : plan.units[i].end]
            for i in plan.embed_rows
        ]
        cached = self._qcache.get(plan.question)
        if cached is None:
            texts.append(plan.question)
        return texts

    def _vectors(self, plan: _Plan, embedded: Any) -> np.ndarray:
        """Cosine similarity of each embedded unit to the question (unit vectors)."""
        rows = np.asarray(embedded, dtype=np.float32)
        n = len(plan.embed_rows)
        if rows.shape[0] > n:
            qvec = rows[n]
            with self._lock:
                self._qcache[plan.question] = qvec
                while len(self._qcache) > 256:
                    self._qcache.popitem(last=False)
        else:
            qvec = self._qcache[plan.question]
        plan.details["semantic"] = True
        plan.details["embedded"] = n
        sims: np.ndarray = rows[:n] @ qvec
        return sims

    # -- selection ------------------------------------------------------------------------

    def _select(self, plan: _Plan, sims: np.ndarray | None) -> CompressionResult:
        units = plan.units
        original = sum(plan.chunk_tokens)
        if plan.budget >= original:
            chosen = set(range(len(units)))
        else:
            scores = normalise_scores(plan.lexical)
            if sims is not None and len(plan.embed_rows):
                scores = blend(scores, plan.embed_rows, sims)
            if float(scores.max(initial=0.0)) <= 0:
                scores = lead_scores(units)  # no signal at all: keep each chunk's lead
            for unit, s in zip(units, scores, strict=True):
                unit.score = float(s)
            chosen = self._choose(plan)
        texts, counts, kept = _assemble(plan, chosen)
        # The joins between kept sentences may shift a token or two: drop the weakest
        # sentences until the exact count fits.
        while sum(counts) > plan.budget and chosen:
            worst = min(chosen, key=lambda i: (units[i].score, -i))
            chosen.discard(worst)
            texts, counts, kept = _assemble(plan, chosen)
        return CompressionResult(
            texts=tuple(texts),
            original_tokens=original,
            kept_tokens=sum(counts),
            budget=plan.budget,
            chunk_original_tokens=tuple(plan.chunk_tokens),
            chunk_kept_tokens=tuple(counts),
            kept_sentences=tuple(kept),
            compressor=self.name,
            model=self.model,
            details=plan.details,
        )

    def _choose(self, plan: _Plan) -> set[int]:
        """Greedy by score: take each unit that still fits (smaller ones fill the gaps).

        Units scoring 0 (nothing from the question, in a chunk with nothing from it either)
        are never taken, so irrelevant chunks vanish even when budget is left over; in
        ``scope="chunk"`` such a chunk keeps its opening sentences instead.
        """
        units = plan.units
        if self.scope == "global":
            groups = [(list(range(len(units))), plan.budget)]
        else:
            groups = _chunk_groups(plan)
        chosen: set[int] = set()
        for members, budget in groups:
            left = budget
            # In chunk scope every chunk keeps something: one without evidence keeps its lead.
            lead = self.scope == "chunk" and max(units[i].score for i in members) <= 0
            for i in sorted(members, key=lambda i: (-units[i].score, i)):
                if units[i].score <= 0 and not lead:
                    break  # no evidence at all: leave the budget unspent, not filled with noise
                cost = units[i].tokens + (1 if chosen else 0)
                if cost <= left:
                    chosen.add(i)
                    left -= cost
        return chosen


def _chunk_groups(plan: _Plan) -> list[tuple[list[int], int]]:
    """Split the budget across chunks in proportion to their size (``scope="chunk"``)."""
    original = sum(plan.chunk_tokens) or 1
    members: dict[int, list[int]] = {}
    for i, unit in enumerate(plan.units):
        members.setdefault(unit.chunk, []).append(i)
    return [(m, plan.budget * plan.chunk_tokens[c] // original) for c, m in members.items()]


def _assemble(plan: _Plan, chosen: set[int]) -> tuple[list[str], list[int], list[tuple[int, ...]]]:
    """Kept text per chunk: adjacent sentences verbatim, gaps joined by a space or newline."""
    per_chunk: dict[int, list[Unit]] = {}
    for i in sorted(chosen):
        per_chunk.setdefault(plan.units[i].chunk, []).append(plan.units[i])
    encoding = plan.encoding
    texts: list[str] = []
    counts: list[int] = []
    kept: list[tuple[int, ...]] = []
    for ci, chunk in enumerate(plan.chunks):
        chosen_units = per_chunk.get(ci, [])
        parts: list[str] = []
        prev: Unit | None = None
        for unit in chosen_units:
            if prev is not None and unit.index == prev.index + 1:
                parts.append(chunk[prev.end : unit.start])
            elif prev is not None:
                parts.append("\n" if "\n" in chunk[prev.end : unit.start] else " ")
            parts.append(chunk[unit.start : unit.end])
            prev = unit
        text = "".join(parts)
        texts.append(text)
        counts.append(len(encoding.encode_ordinary(text)) if text else 0)
        kept.append(tuple(u.index for u in chosen_units))
    return texts, counts, kept


def normalise_answer_text(text: str) -> str:
    """NFKC + collapsed whitespace, for checking that an answer survived compression."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def build_compressor(
    owner: str, compressor: Compressor | None = None, **settings: Any
) -> Compressor:
    """An adapter's compressor: ``compressor`` itself, or an ``ExtractiveCompressor`` built
    from ``settings`` (``None`` values are not given). Both together raise ``ConfigError``:
    the settings would be silently ignored."""
    reject_conflicts(owner, "compressor", compressor, **settings)
    if compressor is not None:
        return compressor
    return ExtractiveCompressor(**{k: v for k, v in settings.items() if v is not None})
