"""BM25 with echoes and phrasing set aside (``graphthrift.history.recall_lexical``)."""

from __future__ import annotations

import math

from graphthrift.history.recall import _with_context, lexical_terms
from graphthrift.history.recall_lexical import (
    as_own,
    asked_kinds,
    compound_terms,
    lexical_scores,
    match_turns,
    phrasing_words,
    repeated_in_query,
    undecided_phrasing,
    value_kinds,
)


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


def test_phrasing_needs_the_echoes_texts_only_when_their_counts_could_decide() -> None:
    """The echoes' texts are read only for a phrasing word the query may use more often
    than most echoes do; where it cannot (each echo holds the word, the query uses it
    once), the decision without texts is the one with them."""
    asked = set(_with_context(lexical_terms(QUERY)))
    texts = {
        1: "Quick check before we go on: what was the return date I gave for the flights request?",
        2: "Quick check before we go on: what was the city I gave for the hotels request?",
        9: "I really enjoy Music.",
    }
    terms = {i: lexical_terms(t) for i, t in texts.items()}
    matches = match_turns(
        {i: frozenset(asked.intersection(t)) for i, t in terms.items()},
        {i: len(t) for i, t in terms.items()},
    )
    phrasing = phrasing_words(matches)
    assert matches.echo == {1, 2} and {"quick", "check", "request"} <= phrasing
    once = {"quick": 1, "check": 1, "request": 1}
    assert undecided_phrasing(matches, phrasing, once) == set()
    # read or not, the same words are phrasing
    echoes = [texts[i] for i in matches.echo]
    assert repeated_in_query(echoes, phrasing, once) == set()
    # "check" twice in the query: the echoes' counts decide, so their texts are read
    twice = {**once, "check": 2}
    assert undecided_phrasing(matches, phrasing, twice) == {"check"}
    assert repeated_in_query(echoes, phrasing, twice) == {"check"}
    assert undecided_phrasing(matches, phrasing, None) == set()
    assert undecided_phrasing(matches, set(), twice) == set()


def test_value_kinds_and_the_kinds_a_question_asks_for() -> None:
    assert value_kinds("Make it for 11:30 in the morning.") == {"#time"}
    assert value_kinds("You gave five in the evening.") == {"#time"}
    assert value_kinds("Four pm is good.") >= {"#time"}
    assert value_kinds("I would like the 1st of this month.") == {"#date"}
    assert value_kinds("There is a salon in Santa Rosa.") == {"#name"}
    assert value_kinds("The number is 707-575-5123.") == {"#number"}
    assert value_kinds("It costs $45.") == {"#money"}
    assert value_kinds("is it open late?") == set()
    assert asked_kinds("Quick check: what was the appointment time I gave?") == {"#time"}
    assert asked_kinds("Which city was it in?") == {"#name"}
    assert asked_kinds("When do I fly?") == {"#time", "#date"}
    assert asked_kinds("What was the genre?") == set()
    assert asked_kinds("Which year was the album from?") == {"#number"}


def test_compounds_are_adjacent_words_written_as_one() -> None:
    assert compound_terms("Find a rental car to pick up at noon.") >= {"&rentalcar", "&pickup"}
    # a stopword before, or after unless it is a particle, makes no compound
    assert compound_terms("the car is red") == set()
    assert as_own({"&rentalcar", "^car", "~car"}) == {"~rentalcar", "^car", "~car"}


def test_a_stay_and_a_number_word_are_not_times_or_names() -> None:
    """Found by review: "one night" is a stay (a number), "Four pm" no name, and a
    contraction makes no compound with the word after it."""
    assert value_kinds("Book 1 night at the Hilton.") == {"#number", "#name"}
    assert "#time" not in value_kinds("Friday night 10 people")
    assert "#time" in value_kinds("Dinner at night at 9")
    assert "#name" not in value_kinds("Four pm is good.")
    assert not any(t.endswith("llpick") for t in compound_terms("We'll pick it up."))


def test_a_particle_makes_a_compound_after_a_verb_only() -> None:
    """Found by review: "a cab in Boston" made "cabin", which a question about a cabin met."""
    assert compound_terms("a cab in Boston") == set()
    assert compound_terms("We need to check in at 3") == {"&checkin"}
    assert "&signup" in compound_terms("Please sign up here")


def test_a_plural_in_ies_meets_its_singular_in_ie() -> None:
    # the shared stemmer writes "movies" as "movy" and "movie" as "movi" (and "studied"
    # as "studi", "study" as "study"): recall folds a final "i" into "y" on both sides
    assert lexical_terms("movies") == lexical_terms("movie") == ["~movy"]
    assert lexical_terms("studied") == lexical_terms("studies") == lexical_terms("study")
    assert compound_terms("horror movie") == compound_terms("horror movies")
    assert lexical_terms("cities") == lexical_terms("city") == ["~city"]


def test_a_name_inside_a_date_span_is_a_name_too() -> None:
    # fact_spans runs "Collective Soul in Vancouver on March 5th" into one date span: the
    # turn states names as well as a date, and a question asking for a name must see them
    assert value_kinds("You want 4 tickets for Collective Soul in Vancouver on March 5th?") >= {
        "#name",
        "#date",
    }
    assert value_kinds("I want tickets for Collective Soul on March 5th.") >= {"#name"}
    # months, weekdays and day words are the date itself, not names
    assert value_kinds("See you on Friday, March 5th.") == {"#date"}
    assert "#name" not in value_kinds("Can we do it Tomorrow at 5 pm?")
