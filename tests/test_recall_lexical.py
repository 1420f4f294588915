"""BM25 with echoes and phrasing set aside (``graphthrift.history.recall_lexical``)."""

from __future__ import annotations

import math

from graphthrift.history.recall import _with_context, lexical_terms
from graphthrift.history.recall_lexical import lexical_scores


def _row(index: int, text: str, context: str = "", d: float = 0.5) -> dict[str, object]:
    own = lexical_terms(text)
    before = ["^" + t[1:] for t in lexical_terms(context)]
    return {"turn_index": index, "terms": [*own, *before], "d": d}


QUERY = "Quick check before we go on: what was the event type I gave for the events request?"
ROWS = [
    _row(0, "I really enjoy Music.", "What preferences do you have for the type of events?"),
    _row(
        1, "Quick check before we go on: what was the return date I gave for the flights request?"
    ),
    _row(2, "Quick check before we go on: what was the city I gave for the hotels request?"),
    _row(3, "You gave the 5th.", "Quick check: what was the return date I gave?"),
    _row(4, "Is the event outdoors?", d=0.2),
]


def test_echoes_score_nothing_and_their_shared_words_are_phrasing() -> None:
    asked = _with_context(lexical_terms(QUERY))
    scores = lexical_scores(ROWS, asked, total=40, n=3)
    assert scores.echo == {1, 2}
    assert 1 not in scores.top and 2 not in scores.top
    # "quick", "check", "gave", "request" are phrasing: the answer to an earlier question,
    # indexed by that question's words, gains nothing from them
    assert scores.score[3] == 0 and 3 not in scores.top
    # the fact's turn is found by its question's word "events" (as context, half weight),
    # the other by its own ("type" is a stopword)
    assert set(scores.top) == {0, 4}
    # idf from the thread: each form of "event" is in one of 40 turns
    event = math.log(1 + (40 - 1 + 0.5) / (1 + 0.5))
    assert math.isclose(scores.score[4], event)
    assert math.isclose(scores.score[0], event / 2)
    assert scores.best_possible > scores.score[0] > 0


def test_without_two_echoes_nothing_is_phrasing() -> None:
    asked = _with_context(lexical_terms(QUERY))
    scores = lexical_scores([ROWS[0], ROWS[1], ROWS[3]], asked, total=40, n=3)
    assert scores.echo == {1}
    assert scores.score[3] > 0  # its context's "quick check ... gave" words count again
    assert scores.share[1] > 0.5 and scores.share.get(0, 0.0) == 0.0
