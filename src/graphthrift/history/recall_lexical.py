"""The lexical side of recall: BM25 over the query's content words, with echoes set aside.

The store returns every turn of the thread that shares a content word with the query (with
its stored terms); this module scores them, in process, the way the SQL once did: computed
in PostgreSQL the same scores took 8-25 ms on a 500-turn thread (per-row subqueries over
CTEs whose size the planner cannot know), here well under a millisecond.

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
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphthrift.text.lexical import index_terms

__all__ = ["CONTEXT_MARK", "ECHO_SHARED", "LEXICAL_MARK", "LexicalScores", "lexical_scores"]

#: Marks a lexical (content-word) term in the stored ``terms``, so that it never meets an
#: identifier of ``query_terms`` (which are matched exactly, without the mark).
LEXICAL_MARK = "~"
#: Marks a content word a turn is indexed by from the turns around it (weighted by half).
CONTEXT_MARK = "^"
#: An echo of the query shares at least this many content words with it (and more than
#: half of its own): fewer is what any two turns on one topic share.
ECHO_SHARED = 3


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
    "Quick check ...: what was the check out date ...")."""
    asked = set(query_terms)
    matched: dict[int, set[str]] = {}
    share: dict[int, float] = {}
    echo: set[int] = set()
    for row in rows:
        terms = row["terms"] or ()
        index = int(row["turn_index"])
        held = asked.intersection(terms)
        matched[index] = held
        shared = sum(1 for t in held if t[0] == LEXICAL_MARK)
        if shared:  # the turn's own words are counted only where the query holds some
            own = sum(1 for t in terms if t[0] == LEXICAL_MARK)
            share[index] = shared / own
            if shared >= ECHO_SHARED and shared * 2 > own:
                echo.add(index)
    phrasing: set[str] = set()
    if len(echo) >= 2:
        uses = Counter(t for i in echo for t in matched[i] if t.startswith(LEXICAL_MARK))
        phrasing = {t[1:] for t, k in uses.items() if k * 2 >= len(echo)}
        if query_counts:
            phrasing -= _repeated_in_query(rows, echo, phrasing, query_counts)
    df = Counter(t for held in matched.values() for t in held if t[1:] not in phrasing)
    idf = {t: math.log(1 + (total - k + 0.5) / (k + 0.5)) for t, k in df.items()}
    score = {
        i: sum(idf[t] / 2 if t.startswith(CONTEXT_MARK) else idf[t] for t in held if t in idf)
        for i, held in matched.items()
    }
    # a text without tokens embeds as a zero vector, whose cosine distance is NaN: last
    distance = {
        int(r["turn_index"]): math.inf if math.isnan(float(r["d"])) else float(r["d"]) for r in rows
    }
    top = sorted(
        (i for i, s in score.items() if s > 0 and i not in echo),
        key=lambda i: (-score[i], distance[i]),
    )[:n]
    best = sum(x for t, x in idf.items() if t.startswith(LEXICAL_MARK))
    return LexicalScores(score, share, frozenset(echo), best, tuple(top))


def _repeated_in_query(
    rows: Sequence[Mapping[str, Any]],
    echo: set[int],
    phrasing: set[str],
    query_counts: Mapping[str, int],
) -> set[str]:
    """The phrasing words the query uses more often than most of its echoes do."""
    counts: dict[str, list[int]] = {t: [] for t in phrasing}
    for row in rows:
        if int(row["turn_index"]) in echo:
            used = Counter(t.lower() for t in index_terms(str(row.get("content") or "")))
            for t in phrasing:
                counts[t].append(used[t])
    return {
        t for t in phrasing if counts[t] and query_counts.get(t, 0) > statistics.median(counts[t])
    }
