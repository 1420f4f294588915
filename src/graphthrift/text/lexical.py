"""Lexical features shared by the compressor and the summarizer: one copy of each.

Words and index terms (stemmed, stopwords out, Han/Kana as character bigrams), exact
numbers and identifiers, number words, and the answer type a question asks for. Pure
functions over ``re``: no model, no tokenizer, deterministic.

Example:
    >>> index_terms("The bridges were founded in 1932")
    ['bridg', 'found', '1932']
    >>> exact_entities("Is ERR-42 fixed in v2.1.0?")
    ['ERR-42', 'v2.1.0']
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "DIGIT",
    "HAN",
    "NUMBER_WORDS",
    "RAW_TOKEN",
    "STOPWORDS",
    "WANTS_NAME",
    "WANTS_NUMBER",
    "exact_entities",
    "has_name",
    "has_number_word",
    "index_terms",
    "stem",
    "word_set",
]

WORD = re.compile(r"[^\W_]+", re.UNICODE)
HAN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
DIGIT = re.compile(r"\d")
NAME = re.compile(r"(?<=[\s(\"“'‘])[A-ZÀ-ÖØ-Þ][\w'’-]*")
RAW_TOKEN = re.compile(r"\S+")
EDGE_PUNCT = "\"'“”‘’()[]{}<>.,;:!?«»"
STOPWORDS = frozenset(
    """a an the of in on at to for by with from as and or but nor that this these those it
    its be is are was were been being am has have had do does did done not no yes so than
    then there their they them he she his her him we our us you your i me my mine what
    which who whom whose when where why how whatever whichever much many name named
    called type kind one ones if into onto about also can could would should will shall
    may might must other some any all each most more such only own same too very s
    t just over under again further once here up down out off""".split()  # noqa: SIM905
)
NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred thousand million billion trillion dozen half quarter
    first second third fourth fifth sixth seventh eighth ninth tenth percent""".split()  # noqa: SIM905
)
WANTS_NUMBER = re.compile(
    r"\b(how (many|much|long|old|far|large|big|high|tall|deep|wide|often|fast|heavy)|"
    r"what (year|years|date|day|month|time|age|percentage|percent|number|amount|size|"
    r"proportion|fraction|decade|century|period)|which (year|decade|century)|when)\b",
    re.IGNORECASE,
)
WANTS_NAME = re.compile(
    r"\b(who|whom|whose|where)\b|^\s*(which|what) [A-Z]?\w+ (was|is)\b", re.IGNORECASE
)


_SUFFIXES = (
    ("ies", "y"),
    ("sses", "ss"),
    ("xes", "x"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("edly", ""),
    ("ing", ""),
    ("ed", ""),
    ("ly", ""),
    ("s", ""),
)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light suffix stripper, the same on both sides, so 'founded' meets 'founding'.

    One suffix goes, then a final 'e' (so 'based', 'bases' and 'base' all meet).
    """
    w = word.lower()
    if len(w) <= 3 or not w.isascii():
        return w
    for suffix, repl in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            if suffix == "s" and w.endswith(("ss", "us", "is")):
                break
            w = w[: len(w) - len(suffix)] + repl
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def index_terms(text: str) -> list[str]:
    """Index terms: stemmed words without stopwords; Han/Kana runs as character bigrams."""
    out: list[str] = []
    for word in WORD.findall(text):
        if HAN.search(word):
            for run in HAN.findall(word):
                out.extend(run[i : i + 2] for i in range(max(len(run) - 1, 1)))
            rest = HAN.sub(" ", word).split()
            out.extend(stem(r) for r in rest if r.lower() not in STOPWORDS)
            continue
        if word.lower() in STOPWORDS:
            continue
        out.append(stem(word))
    return out


def exact_entities(question: str) -> list[str]:
    """Numbers and identifiers in the question, matched verbatim (case-sensitive)."""
    exact: list[str] = []
    for raw in RAW_TOKEN.findall(question):
        tok = raw.strip(EDGE_PUNCT)
        if DIGIT.search(tok) or (len(tok) > 2 and any(c in tok[1:-1] for c in "._/-:")):
            exact.append(tok)
    return exact


def has_name(text: str) -> bool:
    """A capitalised word that is not just the sentence's first word ("The", "It")."""
    if NAME.search(text):
        return True
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    return first[:1].isupper() and first.lower().strip(EDGE_PUNCT) not in STOPWORDS


def has_number_word(text: str) -> bool:
    return any(w in NUMBER_WORDS for w in text.lower().split())


def word_set(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text``, as a set (for word lists written as text)."""
    return frozenset(text.split())
