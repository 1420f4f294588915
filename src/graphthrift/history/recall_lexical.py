"""The lexical side of recall: BM25 over the query's content words, with echoes set aside.

The store returns the posting lists of the query's terms in the thread (which turns hold
each) and each turn's count of its own content words; this module scores the turns that
share a term with the query, in process, the way the SQL once did: computed in PostgreSQL
the same scores took 8-25 ms on a 500-turn thread (per-row subqueries over CTEs whose size
the planner cannot know), here about a millisecond. ``lexical_scores`` does the same from
whole rows (each turn's terms and text), as recall once read them.

- An **echo** is an earlier message phrased like the query: at least ``ECHO_SHARED`` of its
  content words are in the query, and more than half of them. Echoes score nothing.
- A query word that at least half of the echoes use (when there are two or more) is
  **phrasing** ("Quick check before we go on: what was the ... I gave for the ...
  request?"), not the need: it counts in no document frequency and no score, unless the
  query uses it more often than most echoes do ("... what was the check out date ...").
- **BM25** (without length normalisation, as turns are short): the sum of the idf of the
  query's terms a turn holds, idf from the thread's own turns, a term it holds only as the
  context of the turns around it (``CONTEXT_MARK``) at half weight. ``lex_max`` is the most
  any turn could score, for normalising.
- **Value kinds**: a turn is stored with the kinds of value it states (``value_kinds``:
  time, date, money, number, name), and a query with the kinds its words ask for
  (``asked_kinds``: "what time", "which city"); recall favours a turn stating the asked kind.
  An answer seldom repeats the words of the question it answers ("Make it for 11:30 in the
  morning." to "What time would you like?"), but it does state a value of the kind asked.
- **Compounds**: a turn is also indexed by its adjacent word pairs written as one
  (``compound_terms``), which a query word meets as the turn's own word ("the rentalcars
  request" and "a rental car").
- **Answers to other questions** (``answers_to_echoes``): the turn right after an echo that
  asked for something else answers that question, not this one.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphthrift.summarize.facts import fact_spans
from graphthrift.text.lexical import STOPWORDS, index_terms, word_set

__all__ = [
    "COMPOUND_MARK",
    "CONTEXT_MARK",
    "ECHO_SHARED",
    "KIND_MARK",
    "LEXICAL_MARK",
    "LexicalScores",
    "Matches",
    "answers_to_echoes",
    "as_own",
    "asked_kinds",
    "bm25",
    "compound_terms",
    "content_stems",
    "lexical_scores",
    "match_turns",
    "nan_last",
    "phrasing_words",
    "repeated_in_query",
    "undecided_phrasing",
    "value_kinds",
]

#: Marks a lexical (content-word) term in the stored ``terms``, so that it never meets an
#: identifier of ``query_terms`` (which are matched exactly, without the mark).
LEXICAL_MARK = "~"
#: Marks a compound of two of a turn's words written as one (``compound_terms``): it counts
#: as the turn's own content word, but not in its ``own_terms`` count (it repeats them).
COMPOUND_MARK = "&"
#: Marks a content word a turn is indexed by from the turns around it (weighted by half).
CONTEXT_MARK = "^"
#: An echo of the query shares at least this many content words with it (and more than
#: half of its own): fewer is what any two turns on one topic share.
ECHO_SHARED = 3


def content_stems(text: str) -> list[str]:
    """``text``'s content words as recall indexes and asks them: lowercased stems
    (``graphthrift.text.lexical.index_terms``) with a final "i" written "y".

    The shared stemmer turns "movies" into "movy" but "movie" into "movi" (and "studied"
    into "studi", "study" into "study"), so a plural in "-ies" never met its singular in
    "-ie", nor a verb in "-ied" its base. Folding the "i" on both sides joins them; stems
    ending in "y" are unchanged, so turns stored before the fold still meet the words they
    met."""
    return [_fold(t.lower()) for t in index_terms(text)]


def _fold(stem: str) -> str:
    return stem[:-1] + "y" if len(stem) > 2 and stem.endswith("i") else stem


def nan_last(distance: float) -> float:
    """An embedding distance for sorting: NaN (a text without tokens) last."""
    return math.inf if math.isnan(distance) else distance


@dataclass(frozen=True, slots=True)
class LexicalScores:
    """Per turn index: its BM25 score, the share of its own content words the query holds,
    and whether it is an echo; the best possible score; and the ``n`` best non-echo turns by
    score (ties to the nearer embedding)."""

    score: Mapping[int, float]
    share: Mapping[int, float]
    echo: frozenset[int]
    best_possible: float
    top: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Matches:
    """The turns that share a query term: the query's terms each holds, the share of its own
    content words the query holds (where it holds any), and the echoes among them."""

    held: Mapping[int, frozenset[str]]
    share: Mapping[int, float]
    echo: frozenset[int]


def as_own(terms: Iterable[str]) -> set[str]:
    """``terms`` with each compound (``COMPOUND_MARK``) read as an own content word."""
    return {LEXICAL_MARK + t[1:] if t[0] == COMPOUND_MARK else t for t in terms if t}


def match_turns(held: Mapping[int, frozenset[str]], own: Mapping[int, int]) -> Matches:
    """``held``: per turn sharing a query term, the query's terms (both marks) it holds;
    ``own``: per turn, how many content words of its own (``LEXICAL_MARK``) it is indexed by.
    A turn's share and echo flag are counted only where it holds one of the query's own
    words."""
    share: dict[int, float] = {}
    echo: set[int] = set()
    for index, terms in held.items():
        shared = sum(1 for t in terms if t[0] == LEXICAL_MARK)
        if shared:
            mine = own[index]
            share[index] = shared / mine
            if shared >= ECHO_SHARED and shared * 2 > mine:
                echo.add(index)
    return Matches(held, share, frozenset(echo))


def phrasing_words(matches: Matches) -> set[str]:
    """The query's words (unmarked) that at least half of the echoes use, when there are two
    echoes or more: the way questions are asked in this thread, not what this one needs."""
    if len(matches.echo) < 2:
        return set()
    uses = Counter(t for i in matches.echo for t in matches.held[i] if t.startswith(LEXICAL_MARK))
    return {t[1:] for t, k in uses.items() if k * 2 >= len(matches.echo)}


def repeated_in_query(
    echo_texts: Iterable[str], phrasing: set[str], query_counts: Mapping[str, int]
) -> set[str]:
    """The phrasing words the query uses more often than most of its echoes (their texts
    ``echo_texts``) do."""
    counts: dict[str, list[int]] = {t: [] for t in phrasing}
    for content in echo_texts:
        used = Counter(content_stems(content))
        for t in phrasing:
            counts[t].append(used[t])
    return {
        t for t in phrasing if counts[t] and query_counts.get(t, 0) > statistics.median(counts[t])
    }


def undecided_phrasing(
    matches: Matches, phrasing: set[str], query_counts: Mapping[str, int] | None
) -> set[str]:
    """The phrasing words ``repeated_in_query`` must read the echoes' texts for.

    An echo that does not hold a word uses it 0 times, one that holds it at least once. With
    those least counts the median is the lowest it can be: a word the query uses no more
    often than that is phrasing whatever the texts say (as when each echo holds it and the
    query uses it once), so most recalls read no echo's text."""
    if not phrasing or not query_counts:
        return set()
    undecided: set[str] = set()
    for t in phrasing:
        least = [1 if LEXICAL_MARK + t in matches.held[i] else 0 for i in matches.echo]
        if query_counts.get(t, 0) > statistics.median(least):
            undecided.add(t)
    return undecided


def bm25(
    matches: Matches,
    phrasing: set[str],
    total: int,
    distance: Mapping[int, float],
    n: int,
) -> LexicalScores:
    """Score the matched turns (``phrasing`` words set aside); ``total`` is the thread's turn
    count (for idf), ``distance`` each turn's embedding distance (NaN for a text without
    tokens, ranked last), for ties, and then the earlier turn."""
    df = Counter(t for held in matches.held.values() for t in held if t[1:] not in phrasing)
    idf = {t: math.log(1 + (total - k + 0.5) / (k + 0.5)) for t, k in df.items()}
    weight = {t: x / 2 if t.startswith(CONTEXT_MARK) else x for t, x in idf.items()}
    score = {i: sum(weight[t] for t in held if t in weight) for i, held in matches.held.items()}
    far = {i: nan_last(distance[i]) for i in matches.held}
    top = sorted(
        (i for i, s in score.items() if s > 0 and i not in matches.echo),
        key=lambda i: (-score[i], far[i], i),
    )[:n]
    best = sum(x for t, x in idf.items() if t.startswith(LEXICAL_MARK))
    return LexicalScores(score, matches.share, matches.echo, best, tuple(top))


def lexical_scores(
    rows: Sequence[Mapping[str, Any]],
    query_terms: Sequence[str],
    total: int,
    n: int,
    query_counts: Mapping[str, int] | None = None,
) -> LexicalScores:
    """Score the rows that share a query term (``rows``: ``turn_index``, ``terms``, ``d``,
    ``content``); ``query_terms`` are the query's content words in both marks, ``total`` the
    thread's turn count (for idf), ``query_counts`` how often the query uses each content
    word (a word the query uses more often than its echoes do is need as well as phrasing:
    "Quick check ...: what was the check out date ...").

    The one-read form (every matching turn with its terms and text); recall itself reads
    only the query's terms' postings (``match_turns``, ``phrasing_words``, ``bm25``)."""
    asked = set(query_terms)
    by_index = {int(row["turn_index"]): row for row in rows}
    held = {
        i: frozenset(asked.intersection(as_own(row["terms"] or ()))) for i, row in by_index.items()
    }
    own = {
        i: sum(1 for t in row["terms"] or () if t[0] == LEXICAL_MARK) for i, row in by_index.items()
    }
    matches = match_turns(held, own)
    phrasing = phrasing_words(matches)
    if phrasing and query_counts:
        texts = [str(by_index[i].get("content") or "") for i in matches.echo]
        phrasing -= repeated_in_query(texts, phrasing, query_counts)
    distance = {i: float(row["d"]) for i, row in by_index.items()}
    return bm25(matches, phrasing, total, distance, n)


def answers_to_echoes(matches: Matches) -> frozenset[int]:
    """The turns right after an echo that asked for something else (it holds a content
    word the query does not): an earlier question asked like this one. Such a turn answers
    that other question, so the value it states is another fact than the one asked for."""
    return frozenset(
        i + 1 for i in matches.echo if i + 1 not in matches.echo and matches.share[i] < 1.0
    )


#: Marks the kind of value a turn states (``value_kinds``) in its stored terms.
KIND_MARK = "#"
_NUMBER = r"(?:\d{1,2}(?::\d\d)?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_TIME = re.compile(
    rf"\b\d{{1,2}}:\d\d\b|\b{_NUMBER}\s*(?:am|pm|a\.m\.|p\.m\.|o.clock)(?!\w)"
    rf"|\b{_NUMBER}(?: in the| at)? (?:morning|afternoon|evening)\b"
    rf"|\b{_NUMBER} (?:in the|at) night\b"  # "one night" is a stay, not a time
    rf"|\b(?:morning|afternoon|evening) (?:at )?{_NUMBER}\b|\bnight at {_NUMBER}\b"
    r"|\b(?:noon|midnight|half past|quarter past|quarter to)\b",
    re.I,
)
#: The words of a question that ask for a value of one kind ("what time ...", "which city
#: ..."): a turn stating a value of that kind is likelier the answer than one on the same
#: topic stating another.
_ASKS = {
    "time": word_set("time times hour hours when o'clock"),
    "date": word_set("date dates day days when"),
    "money": word_set("price prices cost costs fare fee amount much pay budget"),
    "number": word_set("number numbers many count amount quantity phone year years rating age"),
    "name": word_set(
        "name names who city cities town where place location address area destination "
        "origin airport station called title venue"
    ),
}
_KINDS = ("time", "date", "money", "number", "name")
_NUMBER_WORD = re.compile(_NUMBER, re.I)
_ASK_WORD = re.compile(r"[a-z']+")


def value_kinds(text: str) -> set[str]:
    """The kinds of value ``text`` states (marked ``KIND_MARK``): ``time`` (4:45, 10 am,
    five in the evening), ``date``, ``money``, ``number``, ``name`` (a capitalised run)."""
    kinds: set[str] = set()
    if _TIME.search(text):
        kinds.add("time")
    for span in fact_spans(text):
        # a span's kind carries the preposition before it ("dateuntil")
        kind = next((k for k in _KINDS if span.kind.startswith(k)), "")
        if kind == "name":
            named = any(c.isupper() for c in span.text) and not any(c.isdigit() for c in span.text)
            if named and not _NUMBER_WORD.fullmatch(span.text):  # "Four pm is good."
                kinds.add("name")
            continue
        if kind == "number":
            if not _TIME.search(span.text):
                kinds.add("number")
        else:
            kinds.add(kind)
        if _names_in(span.text):  # "Collective Soul in Vancouver on March 5th"
            kinds.add("name")
    return {KIND_MARK + k for k in kinds}


#: Capitalised words that are part of a date or time, not a name in it.
_DATE_WORDS = word_set(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday "
    "friday saturday sunday today tomorrow tonight yesterday noon midnight next this last "
    "the on at in from to of am pm"
)
_CAPITALISED = re.compile(r"(?<![\w'])[A-Z][\w'-]*")


def _names_in(span: str) -> bool:
    """Whether a date, time, number or money span also holds a name: ``fact_spans`` runs a
    name and the date after it into one span ("Collective Soul in Vancouver on March 5th"),
    whose kind is the date's; a capitalised word other than a month, weekday or day word
    is a name in it."""
    return any(
        len(w) > 1 and w.lower() not in _DATE_WORDS and not _NUMBER_WORD.fullmatch(w)
        for w in _CAPITALISED.findall(span)
    )


def asked_kinds(query: str) -> set[str]:
    """The kinds of value ``query`` asks for (marked ``KIND_MARK``), from its words."""
    words = set(_ASK_WORD.findall(query.lower()))
    return {KIND_MARK + kind for kind, asks in _ASKS.items() if words & asks}


# Particles that make one word with the verb before them ("pick up", "check in"), and the
# verbs that do so: after a noun a particle makes none ("a cab in Boston" is no "cabin").
_PARTICLES = word_set("up down in out off on over back")
_PARTICLE_VERBS = frozenset(
    stem
    for verb in word_set(
        "pick picked picking drop dropped dropping check checked checking log logged logging "
        "sign signed signing set setting take took taking make made making work worked "
        "working back start started starting turn turned turning hand handed handing "
        "look looked looking pay paid paying hold held holding roll rolled rolling "
        "stop stopped stopping print printed printing sleep slept lay laid"
    )
    for stem in content_stems(verb)
)
_PAIR = re.compile(r"(?<![\w'\u2019])([A-Za-z]{2,})[ -](?=([A-Za-z]{2,})\b)")  # not "we'll"


def compound_terms(text: str) -> set[str]:
    """The content words (``COMPOUND_MARK``) of ``text``'s adjacent word pairs written as one
    ("rental car" as "rentalcar", "pick up" as "pickup"): people write a compound both
    ways, and a question may name a thing in the other form than the turn that stated it
    ("the rentalcars request" for "a rental car"; "the pickup time" for "pick it up at")."""
    out: set[str] = set()
    for match in _PAIR.finditer(text):
        first, second = match.group(1).lower(), match.group(2).lower()
        if first in STOPWORDS or (second in STOPWORDS and second not in _PARTICLES):
            continue
        if second in STOPWORDS and not _PARTICLE_VERBS.intersection(_stems(first)):
            continue
        out.update(_compound(first + second))
    return out


@lru_cache(maxsize=65536)
def _stems(word: str) -> tuple[str, ...]:
    """A word's lowercased stems (cached, as ``_compound`` and the particle check ask
    for the same words again and again)."""
    return tuple(content_stems(word))


@lru_cache(maxsize=65536)
def _compound(joined: str) -> tuple[str, ...]:
    """The marked stem of a joined pair (cached: the stemmer is the cost of indexing)."""
    return tuple(COMPOUND_MARK + t for t in _stems(joined) if len(t) > 1)
