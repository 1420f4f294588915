"""Sentence splitting, one module for every layer that cuts text into sentences.

Two splitters, because two kinds of text are cut for two purposes:

- ``split_sentences`` cuts retrieved documents into *spans* that are kept verbatim (the
  compressor): it knows abbreviations, initials, numbers, URLs and CJK full stops, so a kept
  sentence is never a fragment.
- ``split_chat_sentences`` cuts chat turns for a summary (the summarizer): a sentence ends
  at ``.``/``!``/``?`` before a capital or a digit, or at a line break, not after a title
  or an initial; a lower-case continuation stays in the sentence.

Example:
    >>> split_chat_sentences("Book Nopa. Dr. K. Lee will join! Thanks")
    ['Book Nopa.', 'Dr. K. Lee will join!', 'Thanks']
"""

from __future__ import annotations

import re

__all__ = ["split_chat_sentences", "split_sentences"]

# Abbreviations after which a full stop does not end the sentence: titles and Latin forms
# ("Dr. Watson", "e.g. The"), and those that do only when no number follows ("No. 5",
# "Fig. 3", "Jan. 5", "approx. 20", but "I said no. Then ...").
_TITLES = frozenset(
    """mr mrs ms dr prof sr jr st mt ft rev hon gen col lt sgt capt cpt maj adm gov pres
    sen rep vs v cf e.g i.e eg ie viz dept univ ph.d""".split()  # noqa: SIM905
)
_BEFORE_NUMBERS = frozenset(
    """no nos vol vols fig figs eq eqs p pp ch sec art op approx ca est al etc jan feb
    mar apr jun jul aug sep sept oct nov dec a.m p.m u.s u.k u.n""".split()  # noqa: SIM905
)
_CJK_END = "。！？｡．"
_OTHER_END = "।॥؟۔։።"
_CLOSERS = "\"'”’»)]}」』）】"
_BOUNDARY = re.compile(
    rf"(?:[.!?…]+[{re.escape(_CLOSERS)}]*(?=\s)|[{_CJK_END}{_OTHER_END}]+[{re.escape(_CLOSERS)}]*)"
)
_LINE_BREAK = re.compile(r"\n")
_PREV_WORD = re.compile(r"([^\s(\[\"'“‘]+)$")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` of ``text``, stripped of surrounding whitespace.

    Splits at line breaks, at ``.``/``!``/``?`` followed by whitespace, and at CJK and
    other scripts' full stops (no whitespace needed). Never splits inside a number
    (``3.14``), a version or identifier (``v2.1.0``), a URL or a domain, and not after
    common abbreviations (``Dr.``, ``e.g.``, ``No. 5``) or initials (``J. R. R.``).

    Example:
        >>> t = "Dr. Smith paid $3.14 for v2.1.0 at example.com. It worked! 東京は大きい。本当だ。"
        >>> [t[a:b] for a, b in split_sentences(t)]
        ['Dr. Smith paid $3.14 for v2.1.0 at example.com.', 'It worked!', '東京は大きい。', '本当だ。']
    """
    spans: list[tuple[int, int]] = []
    line_start = 0
    for brk in [*(m.start() for m in _LINE_BREAK.finditer(text)), len(text)]:
        _split_line(text, line_start, brk, spans)
        line_start = brk + 1
    return spans


def _split_line(text: str, start: int, end: int, out: list[tuple[int, int]]) -> None:
    line = text[start:end]
    cut = 0
    for m in _BOUNDARY.finditer(line):
        stop = m.end()
        if line[m.start()] in ".!?…" and not _ends_sentence(line, m.start(), stop):
            continue
        _emit(text, start + cut, start + stop, out)
        cut = stop
    _emit(text, start + cut, end, out)


def _emit(text: str, a: int, b: int, out: list[tuple[int, int]]) -> None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    if a < b:
        out.append((a, b))


def _ends_sentence(line: str, dot: int, stop: int) -> bool:
    """Whether the Latin terminator at ``line[dot:stop]`` ends a sentence."""
    rest = line[stop:].lstrip()
    if not rest:
        return True
    nxt = rest[0]
    if nxt.islower():
        return False  # "approx. five", "e.g. the", "... and then"
    if line[dot] != "." or line[dot:stop].startswith(".."):
        return True
    m = _PREV_WORD.search(line, 0, dot)
    if m is None:
        return True
    word = m.group(1).lower()
    if len(word) == 1 and word.isalpha():
        return False  # an initial: "J. R. R. Tolkien", "Franklin D. Roosevelt"
    if word in _TITLES:
        return False
    return not (word in _BEFORE_NUMBERS and nxt.isdigit())


# A chat sentence ends at . ! ? before a capital, but not after a title or an initial
# ("Dr. K. Lee").
CHAT_SENTENCE_BREAK = re.compile(
    r"(?<=[.!?])(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\bSt\.)(?<!\bJr\.)"
    r"(?<!\bvs\.)(?<!\b[A-Z]\.)\s+(?=[\"'(\[]?[A-Z0-9])|\n+"
)


def split_chat_sentences(text: str) -> list[str]:
    """The sentences of a chat turn, as written (callers strip and drop empty parts)."""
    return CHAT_SENTENCE_BREAK.split(text)
