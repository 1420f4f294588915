"""How the extractive compressor scores sentences: lexical evidence, blended with cosine.

BM25 over the request's own sentences, exact matches of the question's numbers and
identifiers, the answer type the question asks for, neighbours and chunk coverage; the
embedder's cosine re-ranks a shortlist. Also the cutting of over-long sentences.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphthrift.text.lexical import (
    DIGIT,
    HAN,
    RAW_TOKEN,
    WANTS_NAME,
    WANTS_NUMBER,
    exact_entities,
    has_name,
    has_number_word,
    index_terms,
)

__all__ = [
    "Unit",
    "blend",
    "count_many",
    "cut_long",
    "lead_scores",
    "lexical_scores",
    "normalise_scores",
]


@dataclass(slots=True)
class Unit:
    """One scorable piece: a sentence, or part of an over-long sentence."""

    chunk: int
    index: int  # position among the chunk's units
    start: int
    end: int
    tokens: int
    score: float = 0.0


# Feature weights, chosen on the first half of xquad_en's articles (see bench/compress.py)
# and checked on the second half.
_W_ENTITY = 0.5  # per exact number or identifier from the question ("ERR-42", "v2.1.0")
_W_NEIGHBOUR = 0.25  # share of the best neighbour's score a sentence inherits
_W_NUMBER_FIT = 0.3  # boost when the question asks for a number and the sentence has one
_W_NAME_FIT = 0.2  # boost when the question asks "who/where" and the sentence names someone
_W_COVERAGE = 0.35  # weight of the chunk's coverage of the question
_W_SEMANTIC = 0.5  # weight of cosine similarity (above the shortlist's lowest) in re-ranking


def count_many(encoding: Any, texts: list[str]) -> list[int]:
    return [len(encoding.encode_ordinary(t)) for t in texts]


def cut_long(chunk: str, a: int, b: int, limit: int, encoding: Any) -> list[tuple[int, int]]:
    """Pack the words of ``chunk[a:b]`` into pieces of at most ``limit`` tokens.

    Cuts only at whitespace, preferring just after a clause mark (, ; : — ，、；：);
    unspaced scripts (CJK, Thai) are cut between characters.
    """
    words: list[tuple[int, int]] = []
    for m in RAW_TOKEN.finditer(chunk, a, b):
        s, e = m.start(), m.end()
        if e - s > 8 and (HAN.search(chunk, s, e) or not chunk[s:e].isascii()):
            words.extend(cut_unspaced(chunk, s, e, max(limit // 2, 1)))
        else:
            words.append((s, e))
    counts = [len(encoding.encode_ordinary(" " + chunk[s:e])) for s, e in words]
    pieces: list[tuple[int, int]] = []
    cur_start, cur_tokens, last_clause = words[0][0], 0, -1
    i = 0
    while i < len(words):
        s, e = words[i]
        if cur_tokens and cur_tokens + counts[i] > limit:
            cut = last_clause if last_clause > 0 else i
            pieces.append((cur_start, words[cut - 1][1]))
            cur_start, cur_tokens, last_clause = words[cut][0], 0, -1
            i = cut
            continue
        cur_tokens += counts[i]
        if chunk[e - 1] in ",;:—，、；：" and cur_tokens >= limit // 2:
            last_clause = i + 1
        i += 1
    pieces.append((cur_start, words[-1][1]))
    return [(s, e) for s, e in pieces if e > s]


def cut_unspaced(chunk: str, s: int, e: int, step: int) -> list[tuple[int, int]]:
    """Cut an unspaced run (about one token per CJK character) every ``step`` characters,
    moving each cut forward so it never falls inside a run of ASCII letters and digits."""
    out: list[tuple[int, int]] = []
    start = s
    while start < e:
        cut = min(start + step, e)
        while (
            cut < e
            and chunk[cut - 1].isascii()
            and chunk[cut - 1].isalnum()
            and chunk[cut].isascii()
            and (chunk[cut].isalnum() or chunk[cut] in ".,")
        ):
            cut += 1
        out.append((start, cut))
        start = cut
    return out


def lexical_scores(question: str, units: list[Unit], texts: list[str]) -> tuple[np.ndarray, float]:
    """BM25 + exact entity matches + answer type + neighbours + chunk coverage, per unit.

    Also returns the strongest evidence: the share of the question's IDF mass that the
    best single sentence contains (the semantic fallback fires when it is low).
    """
    n = len(units)
    scores = np.zeros(n, dtype=np.float64)
    q_terms = list(dict.fromkeys(index_terms(question)))
    exact = exact_entities(question)
    if not n or (not q_terms and not exact):
        return scores, 0.0
    bags = [Counter(index_terms(t)) for t in texts]
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    lengths = np.array([max(sum(b.values()), 1) for b in bags], dtype=np.float64)
    avg = float(lengths.mean())
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in q_terms}
    k1, b = 1.2, 0.75
    norm = k1 * (1 - b + b * lengths / avg)
    for i, bag in enumerate(bags):
        total = 0.0
        for t in q_terms:
            tf = bag.get(t)
            if tf:
                total += idf[t] * tf * (k1 + 1) / (tf + norm[i])
        scores[i] = total
    max_idf = max(idf.values(), default=1.0)
    # Exact numbers and identifiers from the question are strong evidence, and BM25 alone
    # would see "ERR-42" only as the two weak terms "err" and "42".
    for i, text in enumerate(texts):
        scores[i] += sum(_W_ENTITY for e in exact if e in text) * max_idf
    # Chunk coverage: the share of the question's IDF mass that the chunk contains.
    q_mass = sum(idf.values()) or 1.0
    chunk_terms: dict[int, set[str]] = {}
    for unit, bag in zip(units, bags, strict=True):
        chunk_terms.setdefault(unit.chunk, set()).update(t for t in q_terms if t in bag)
    coverage = {c: sum(idf[t] for t in ts) / q_mass for c, ts in chunk_terms.items()}
    best_unit_cov = max(
        (sum(idf[t] for t in q_terms if t in bag) / q_mass for bag in bags), default=0.0
    )
    # Neighbours: an answer often sits next to the sentence that repeats the question.
    smoothed = scores.copy()
    for i in range(n):
        near = [
            scores[j] for j in (i - 1, i + 1) if 0 <= j < n and units[j].chunk == units[i].chunk
        ]
        if near:
            smoothed[i] += _W_NEIGHBOUR * max(near)
    top = float(smoothed.max()) or 1.0
    wants_number = bool(WANTS_NUMBER.search(question))
    wants_name = bool(WANTS_NAME.search(question)) and not wants_number
    for i, text in enumerate(texts):
        rel = smoothed[i] / top
        if rel <= 0:
            # No word of the question, but the answer type it asks for ("How long do I have
            # to return an item?" -> "The refund window is 14 days") in a chunk that is about
            # the question: weak evidence, kept when the budget has room for it.
            cover = coverage.get(units[i].chunk, 0.0)
            if wants_number and cover > 0 and (DIGIT.search(text) or has_number_word(text)):
                smoothed[i] = _W_NUMBER_FIT * _W_COVERAGE * cover
            continue
        fit = 0.0
        if wants_number and (DIGIT.search(text) or has_number_word(text)):
            fit = _W_NUMBER_FIT
        elif wants_name and has_name(text):
            fit = _W_NAME_FIT
        smoothed[i] = rel * (1 + fit) + _W_COVERAGE * coverage.get(units[i].chunk, 0.0)
    return smoothed, best_unit_cov


def normalise_scores(scores: np.ndarray) -> np.ndarray:
    top = float(scores.max(initial=0.0))
    return scores / top if top > 0 else scores.copy()


def blend(scores: np.ndarray, rows: list[int], sims: np.ndarray) -> np.ndarray:
    """Mix cosine similarity into the shortlist; others keep their lexical score."""
    out = scores.copy()
    if float(scores.max(initial=0.0)) <= 0:
        out[rows] = sims + 1.0  # cosine in [-1, 1]; the unembedded rest stays at 0
        return out
    floor = float(sims.min())
    out[rows] = scores[rows] + _W_SEMANTIC * (sims - floor)
    return out


def lead_scores(units: list[Unit]) -> np.ndarray:
    """Without any signal, prefer each chunk's opening sentences, earlier chunks first."""
    return np.array([1.0 / (1 + u.index) + 1e-3 / (1 + u.chunk) for u in units])
