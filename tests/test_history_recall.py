"""Recall of folded turns from pgvector: hybrid retrieval, budget, isolation, failing open."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_helpers import scratch_database
from graphthrift import diagnostics
from graphthrift.embed.static import StaticEmbedder
from graphthrift.errors import ConfigError
from graphthrift.history.recall import (
    FoldedTurn,
    FoldedTurnStore,
    focused,
    lexical_terms,
    query_terms,
)
from graphthrift.store.postgres import Store


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder()


@pytest.fixture
def turns(store: Store, embedder: StaticEmbedder) -> FoldedTurnStore:
    return FoldedTurnStore(store, embedder=embedder)


THREAD = [
    FoldedTurn(0, "user", "Hi, I need a table for four at an Italian place in Oakland."),
    FoldedTurn(1, "assistant", "Sure, which day would you like?"),
    FoldedTurn(2, "user", "Next Friday at 7:30 pm, please."),
    FoldedTurn(3, "user", "My order number is A-1042 and it was shipped to Berlin."),
    FoldedTurn(4, "user", "My other order number is B-7731 and it was shipped to Munich."),
    FoldedTurn(5, "assistant", "The weather in Oakland is sunny today."),
    FoldedTurn(6, "user", "I also want to book a flight to Denver on March 3rd."),
]


def test_recall_finds_the_turn_by_meaning(turns: FoldedTurnStore, tenant: str) -> None:
    assert turns.add(tenant, "t1", THREAD) == len(THREAD)
    found = turns.recall(tenant, "t1", "Which flight did I want to book?", k=1, token_budget=200)
    assert [s.index for s in found] == [6]
    assert found[0].text == THREAD[6].text and found[0].role == "user"
    assert found[0].tokens > 0


def test_identifiers_in_the_query_win_over_similar_turns(
    turns: FoldedTurnStore, tenant: str
) -> None:
    turns.add(tenant, "t1", THREAD)
    for order, index in (("B-7731", 4), ("A-1042", 3)):
        found = turns.recall(
            tenant, "t1", f"Where did order {order} ship to?", k=1, token_budget=200
        )
        assert [s.index for s in found] == [index]
        assert found[0].matched_terms == 1
    assert query_terms("Where did order B-7731 ship, at 7:30 in Berlin?") == [
        "7:30",
        "b-7731",
        "berlin",
    ]


def test_k_and_the_token_budget_bound_what_comes_back(turns: FoldedTurnStore, tenant: str) -> None:
    turns.add(tenant, "t1", THREAD)
    found = turns.recall(tenant, "t1", "order shipped", k=3, token_budget=10_000)
    assert len(found) == 3
    assert [s.index for s in found] == sorted(s.index for s in found)  # thread order
    one = min(s.tokens for s in found)
    tight = turns.recall(tenant, "t1", "order shipped", k=3, token_budget=one)
    assert len(tight) >= 1 and sum(s.tokens for s in tight) <= one
    assert turns.recall(tenant, "t1", "order shipped", k=0) == []
    assert turns.recall(tenant, "t1", "order shipped", token_budget=0) == []
    assert turns.recall(tenant, "t1", "   ") == []
    with pytest.raises(ConfigError, match="token_budget"):
        turns.recall(tenant, "t1", "x", token_budget=-1)
    with pytest.raises(ConfigError, match="thread"):
        turns.recall(tenant, "", "x")


def test_a_turn_added_twice_is_kept_once(turns: FoldedTurnStore, tenant: str) -> None:
    assert turns.add(tenant, "t1", THREAD[:3]) == 3
    assert turns.add(tenant, "t1", THREAD[:4]) == 1
    found = turns.recall(tenant, "t1", "table", k=10, token_budget=10_000)
    assert sorted(s.index for s in found) == [0, 1, 2, 3]
    assert turns.forget(tenant, "t1") == 4
    assert turns.recall(tenant, "t1", "table", k=10, token_budget=10_000) == []


def test_empty_text_is_stored_and_never_outranks(turns: FoldedTurnStore, tenant: str) -> None:
    turns.add(tenant, "t1", [FoldedTurn(0, "user", ""), FoldedTurn(1, "user", "Flight to Denver")])
    found = turns.recall(tenant, "t1", "flight to Denver", k=1, token_budget=100)
    assert [s.index for s in found] == [1]


async def test_async_twins(turns: FoldedTurnStore, tenant: str) -> None:
    assert await turns.aadd(tenant, "t2", THREAD) == len(THREAD)
    found = await turns.arecall(tenant, "t2", "Where did order A-1042 ship to?", k=1)
    assert [s.index for s in found] == [3]
    assert found == turns.recall(tenant, "t2", "Where did order A-1042 ship to?", k=1)


async def test_fail_open_when_the_database_is_down(
    store: Store, embedder: StaticEmbedder, tmp_path: Path
) -> None:
    with scratch_database(store.url) as (url, set_down):
        db = Store(url, home=tmp_path)
        turns = FoldedTurnStore(db, embedder=embedder, timeout=0.5)
        assert turns.add("t", "th", THREAD) == len(THREAD)
        set_down(True)
        before = diagnostics.counters()
        assert turns.recall("t", "th", "order A-1042") == []
        assert turns.add("t", "th", [FoldedTurn(9, "user", "later")]) == 0
        assert await turns.arecall("t", "th", "order A-1042") == []
        assert await turns.aadd("t", "th", [FoldedTurn(9, "user", "later")]) == 0
        after = diagnostics.counters()
        assert after.get("recall_failure", 0) == before.get("recall_failure", 0) + 2
        assert after.get("recall_add_failure", 0) == before.get("recall_add_failure", 0) + 2
        set_down(False)
        for _ in range(3):  # stale pooled connections fail once each, then heal
            if turns.recall("t", "th", "order A-1042"):
                break
        assert [s.index for s in turns.recall("t", "th", "order A-1042", k=1)] == [3]
        db.close()


# -- isolation: recall never crosses a tenant or a thread --------------------------------

SCOPES = st.tuples(st.sampled_from(["acme", "globex", ""]), st.sampled_from(["a", "b", "c"]))
WORDS = ["order", "A-1042", "Berlin", "flight", "7:30", "refund", "invoice", "Denver", "42"]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    writes=st.lists(
        st.tuples(SCOPES, st.lists(st.sampled_from(WORDS), min_size=1, max_size=6)),
        min_size=1,
        max_size=12,
    ),
    reader=SCOPES,
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
)
def test_recall_never_returns_another_tenants_or_threads_turns(
    turns: FoldedTurnStore,
    writes: list[tuple[tuple[str, str], list[str]]],
    reader: tuple[str, str],
    query: list[str],
) -> None:
    run = uuid.uuid4().hex[:10]  # examples share the database: a namespace per example

    def scoped(scope: tuple[str, str]) -> tuple[str, str]:
        return f"{scope[0]}{run}" if scope[0] else "", f"{scope[1]}-{run}"

    owned: dict[tuple[str, str], set[str]] = {}
    for k, (scope, words) in enumerate(writes):
        tenant, thread = scoped(scope)
        content = f"{' '.join(words)} [{scope[0]}/{scope[1]}/{k}]"
        turns.add(tenant, thread, [FoldedTurn(k, "user", content)])
        owned.setdefault((tenant, thread), set()).add(content)
    tenant, thread = scoped(reader)
    found = turns.recall(tenant, thread, " ".join(query), k=20, token_budget=100_000)
    mine = owned.get((tenant, thread), set())
    assert {s.text for s in found} <= mine
    assert len(found) == len(mine)  # within its own thread recall is exact: all of it fits
    for s in found:
        assert s.text.endswith(f"[{reader[0]}/{reader[1]}/{s.index}]")


def test_a_turn_with_a_nul_character_is_kept(turns: FoldedTurnStore, tenant: str) -> None:
    # PostgreSQL text cannot hold U+0000: the turn must still be kept, not dropped
    before = diagnostics.get("recall_add_failure")
    assert turns.add(tenant, "t1", [FoldedTurn(0, "tool", "order A-1042\x00 shipped")]) == 1
    assert diagnostics.get("recall_add_failure") == before
    found = turns.recall(tenant, "t1", "order A-1042", k=1)
    assert [s.text for s in found] == ["order A-1042 shipped"]


# An invented thread: the user asked questions phrased like the new one before; the fact
# asked for is an answer that does not repeat its question's words.
CHAT = [
    FoldedTurn(0, "user", "Quick check: what was the hotel I gave for the trip?"),
    FoldedTurn(1, "assistant", "You gave the Grand Budapest."),
    FoldedTurn(2, "assistant", "Which restaurant would you like for the dinner?"),
    FoldedTurn(3, "user", "Let's go with Nopa on Divisadero."),
    FoldedTurn(4, "user", "Quick check: what was the airline I gave for the trip?"),
    FoldedTurn(5, "assistant", "You gave Alaska."),
    FoldedTurn(6, "user", "Book me a cab to the airport at noon."),
    FoldedTurn(7, "assistant", "The weather will be sunny for the whole trip."),
    FoldedTurn(8, "user", "Quick check: what was the museum I gave for the trip?"),
    FoldedTurn(9, "assistant", "You gave the Exploratorium."),
    FoldedTurn(10, "user", "Quick check: what was the car I gave for the trip?"),
    FoldedTurn(11, "assistant", "You gave a compact hatchback."),
]


def test_content_words_find_the_answer_over_echoes_of_the_question(
    turns: FoldedTurnStore, tenant: str
) -> None:
    turns.add(tenant, "chat", CHAT)
    query = "Quick check: what was the restaurant I gave for the trip?"
    assert query_terms(query) == []  # no identifier or number: only words can match
    found = turns.recall(tenant, "chat", query, k=2, token_budget=200)
    # the turn about restaurants (vector similarity alone ranks it below the questions
    # phrased like this one), and none of those earlier questions
    indexes = {s.index for s in found}
    assert 2 in indexes and not indexes & {0, 4, 8, 10}
    # the answer is indexed by its question's words too (as context, at half weight)
    assert 3 in {s.index for s in turns.recall(tenant, "chat", "restaurant", k=2)}
    assert lexical_terms("Which restaurants?") == ["~restaurant"]


def test_lexical_settings_are_checked(store: Store) -> None:
    with pytest.raises(ConfigError, match="lexical_weight"):
        FoldedTurnStore(store, lexical_weight=-1)
    with pytest.raises(ConfigError, match="echo_penalty"):
        FoldedTurnStore(store, echo_penalty=-0.5)


def test_the_recall_deadline_is_a_keyword_else_its_variable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHTHRIFT_RECALL_TIMEOUT", "1.5")
    assert FoldedTurnStore(store).timeout == 1.5
    assert FoldedTurnStore(store, timeout=0.2).timeout == 0.2
    monkeypatch.delenv("GRAPHTHRIFT_RECALL_TIMEOUT")
    assert FoldedTurnStore(store).timeout == 0.5
    monkeypatch.setenv("GRAPHTHRIFT_RECALL_TIMEOUT", "0")
    with pytest.raises(ConfigError, match="timeout"):
        FoldedTurnStore(store)


# A long chat in the shape of the long multi-session set: many questions asked in one
# phrasing, each answered, and the turn holding the fact asked for phrased otherwise.
TEMPLATED = [
    FoldedTurn(0, "assistant", "What preferences do you have for the type of events?"),
    FoldedTurn(1, "user", "I really enjoy Music."),
    FoldedTurn(2, "assistant", "Is smoking allowed in the hotel?"),
    FoldedTurn(3, "user", "No, smoking is not allowed in the hotel."),
    *(
        turn
        for k, (slot, service, value) in enumerate(
            [
                ("return date", "flights", "the 5th"),
                ("origin airport", "flights", "San Diego"),
                ("departure date", "flights", "the 12th"),
                ("pickup location", "rentalcars", "SFO"),
                ("subtitle language", "media", "English"),
            ]
        )
        for turn in (
            FoldedTurn(
                4 + 2 * k,
                "user",
                f"Quick check before we go on: what was the {slot} I gave for the"
                f" {service} request?",
            ),
            FoldedTurn(5 + 2 * k, "assistant", f"You gave {value}."),
        )
    ),
]


def test_phrasing_shared_with_earlier_questions_scores_nothing(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """Five earlier questions in the query's phrasing (each more similar to it than any
    other turn) must not crowd out the answer: the words they share with the query are
    phrasing, and they are echoes."""
    turns.add(tenant, "long", TEMPLATED)
    query = "Quick check before we go on: what was the event type I gave for the events request?"
    found = turns.recall(tenant, "long", query, k=2, token_budget=200)
    texts = [s.text for s in found]
    assert "I really enjoy Music." in texts, texts
    assert not any(t.startswith("Quick check") for t in texts), texts


def test_a_turn_stating_a_value_outranks_one_on_the_same_topic_without(
    turns: FoldedTurnStore, tenant: str, store: Store, embedder: StaticEmbedder
) -> None:
    chat = [
        FoldedTurn(0, "user", "Which location of the hotels allows smoking?"),
        FoldedTurn(1, "user", "I need hotels in London, UK."),
    ]
    turns.add(tenant, "v", chat)
    query = "Which location did I give for the hotels?"
    assert [s.index for s in turns.recall(tenant, "v", query, k=1)] == [1]
    # without the value boost the turn about smoking, closer in wording, wins
    plain = FoldedTurnStore(store, embedder=embedder, value_boost=0.0)
    assert [s.index for s in plain.recall(tenant, "v", query, k=1)] == [0]
    with pytest.raises(ConfigError, match="value_boost"):
        FoldedTurnStore(store, value_boost=-1)


def test_no_recall_room_is_reserved_before_anything_is_folded(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """A thread that fits the budget is sent whole: the recall room is only held once the
    thread has folded turns to recall (holding it earlier folded recent turns for nothing)."""
    from graphthrift.history import HistoryPruner
    from graphthrift.text.messages import Message

    chat = [
        Message("user" if k % 2 == 0 else "assistant", f"Turn {k}: the {word} is {k * 7}.")
        for k, word in enumerate(["table", "car", "hotel", "flight", "museum", "concert"] * 2)
    ]
    alone = HistoryPruner(max_tokens=180, fold_policy="budget").prune(chat)
    with_recall = HistoryPruner(max_tokens=180, fold_policy="budget", recall=turns)
    # the thread fits the budget but not the budget less the recall room
    assert 180 - with_recall.recall_tokens < alone.tokens_out <= 180
    result = with_recall.prune(chat, tenant=tenant, thread="fits")
    assert result.state.folded == 0 and result.state.folded_total == 0
    assert [m.text for m in result.messages] == [m.text for m in chat]


def test_a_phrasing_word_the_query_uses_more_often_than_its_echoes_still_counts(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """ "Quick check ...: what was the check out date ...": "check" is the phrasing's word
    in every earlier question, but this query uses it twice, once for what it needs."""
    chat = [
        *TEMPLATED,
        FoldedTurn(14, "assistant", "Which days do you need the room?"),
        FoldedTurn(15, "user", "I want to check out on the 4th of March."),
        FoldedTurn(16, "user", "Book me a table for 2 on the 9th of March."),
    ]
    turns.add(tenant, "checkout", chat)
    query = (
        "Quick check before we go on: what was the check out date I gave for the hotels request?"
    )
    found = turns.recall(tenant, "checkout", query, k=1, token_budget=200)
    assert [s.text for s in found] == ["I want to check out on the 4th of March."]


def test_a_turn_is_found_by_the_words_of_the_turns_two_away(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """The request ("a rental car") is two turns before the answer ("At Warsaw Chopin
    Airport."), with the assistant's question in between."""
    chat = [
        FoldedTurn(0, "user", "I need to rent a car."),
        FoldedTurn(1, "assistant", "Where would you like to pick it up?"),
        FoldedTurn(2, "user", "At Warsaw Chopin Airport."),
        FoldedTurn(3, "assistant", "Which dates do you need?"),
        FoldedTurn(4, "user", "From March 7th to March 13th."),
        FoldedTurn(5, "user", "Now find me a restaurant in Oakland."),
        FoldedTurn(6, "assistant", "Encuentro in Oakland has a table at 12 pm."),
        FoldedTurn(7, "user", "And a hotel in Paris for two nights."),
        FoldedTurn(8, "assistant", "The Ace Hotel in Paris has a room."),
    ]
    turns.add(tenant, "rental", chat)
    query = "Which city did I give for the car I rent?"
    found = turns.recall(tenant, "rental", query, k=2, token_budget=200)
    assert 2 in [s.index for s in found]


def test_a_long_turn_is_recalled_as_its_sentences_that_matter(
    store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    """Only the sentences of a recalled turn that state a value or use a word of the query
    come back, so more turns fit the room; ``focus=False`` recalls turns whole."""
    chat = [
        FoldedTurn(
            0,
            "assistant",
            "Sure, I can help with that. Let me look at what is available. The flight"
            " leaves at 6:40 am from Gate 12. Is there anything else I can do for you?",
        ),
        FoldedTurn(1, "user", "Great, and the return flight is on the 14th."),
    ]
    focused = FoldedTurnStore(store, embedder=embedder)
    focused.add(tenant, "focus", chat)
    query = "When does the flight leave?"
    whole = FoldedTurnStore(store, embedder=embedder, focus=False)
    kept = {s.index: s for s in focused.recall(tenant, "focus", query, k=2, token_budget=200)}
    full = {s.index: s for s in whole.recall(tenant, "focus", query, k=2, token_budget=200)}
    assert kept[0].text == "… The flight leaves at 6:40 am from Gate 12. …"
    assert kept[0].tokens < full[0].tokens and full[0].text == chat[0].text
    assert kept[1].text == full[1].text == chat[1].text  # one sentence: whole
    # the room that holds both focused turns holds only one whole turn
    room = kept[0].tokens + kept[1].tokens
    assert len(focused.recall(tenant, "focus", query, k=2, token_budget=room)) == 2
    assert len(whole.recall(tenant, "focus", query, k=2, token_budget=room)) == 1


def test_a_focused_turn_found_by_its_neighbours_words_keeps_its_reply(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """ "No thanks." answers the turn before ("Would you like breakfast?"): a turn the query
    reaches through that turn's words keeps its first sentence, or the recall would read as
    if the user never answered."""
    chat = [
        FoldedTurn(0, "assistant", "Would you like breakfast included at the hotel?"),
        FoldedTurn(1, "user", "No thanks. I do need parking for my car though."),
    ]
    turns.add(tenant, "reply", chat)
    query = "Did I want breakfast, and do I need parking?"
    found = {s.index: s.text for s in turns.recall(tenant, "reply", query, k=2)}
    assert found[1] == chat[1].text


def test_a_turn_stating_a_value_of_the_asked_kind_outranks_other_values(
    turns: FoldedTurnStore, tenant: str, store: Store, embedder: StaticEmbedder
) -> None:
    """ "What time ..." asks for a time: the turn that states one ("11:30 in the morning",
    with no word of the query) beats a turn on the same topic stating a name."""
    chat = [
        FoldedTurn(0, "user", "I want to book a table at a restaurant in San Jose."),
        FoldedTurn(1, "assistant", "What time would you like the reservation for?"),
        FoldedTurn(2, "user", "Make it for 11:30 in the morning."),
        FoldedTurn(3, "assistant", "Sakura Sushi is a lovely restaurant in San Jose."),
        FoldedTurn(4, "user", "Is it a restaurant with vegetarian dishes?"),
        FoldedTurn(5, "assistant", "Yes, Sakura Sushi serves vegetarian dishes."),
    ]
    turns.add(tenant, "kind", chat)
    query = "What time did I ask for at the restaurant?"
    assert [s.index for s in turns.recall(tenant, "kind", query, k=1)] == [2]
    # without the kind boost a turn on the restaurant, stating a name, wins
    plain = FoldedTurnStore(store, embedder=embedder, kind_boost=0.0)
    assert [s.index for s in plain.recall(tenant, "kind", query, k=1)] != [2]
    with pytest.raises(ConfigError, match="kind_boost"):
        FoldedTurnStore(store, kind_boost=-1)


def test_the_answer_to_an_earlier_question_for_something_else_is_marked_down(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """ "You gave Oakland." answers an earlier question asked like the query but for another
    thing (the city): it is not the answer now, though it borrows the query's words from
    that question. The answer to the same question asked earlier is not marked down."""
    ask = "Quick check before we go on: what was the {} I gave for the {} request?"
    chat = [
        FoldedTurn(0, "user", "I need a hotel in Oakland for two nights."),
        FoldedTurn(1, "assistant", "The Marriott has rooms in Oakland. Shall I book it?"),
        FoldedTurn(2, "user", "Yes, please book it."),
        FoldedTurn(3, "user", ask.format("number of nights", "hotels")),
        FoldedTurn(4, "assistant", "You gave two nights."),
        FoldedTurn(5, "user", ask.format("city", "hotels")),
        FoldedTurn(6, "assistant", "You gave Oakland."),
        FoldedTurn(7, "user", ask.format("destination", "flights")),
        FoldedTurn(8, "assistant", "You gave Denver."),
    ]
    turns.add(tenant, "answers", chat)
    query = ask.format("number of nights", "hotels")
    found = {s.index for s in turns.recall(tenant, "answers", query, k=4)}
    assert {0, 4} <= found and not found & {6, 8}, found


def test_a_compound_meets_its_words_written_apart(turns: FoldedTurnStore, tenant: str) -> None:
    """ "the rentalcars request" names what a turn called "a rental car", and "pickup" what
    it called "pick up": a turn is also indexed by its word pairs written as one."""
    chat = [
        FoldedTurn(0, "user", "I'd like to find a rental car and pick it up in Phoenix."),
        FoldedTurn(1, "assistant", "The Hilton in the city of Tucson has rooms on March 3rd."),
        FoldedTurn(2, "user", "Book me a table in the city of Tempe at Sakura Sushi."),
        FoldedTurn(3, "user", "I need a hotel in the city of Mesa instead."),
    ]
    turns.add(tenant, "compound", chat)
    query = "Which city did I give for the rentalcars request?"
    assert [s.index for s in turns.recall(tenant, "compound", query, k=1)] == [0]


def test_a_value_of_the_asked_kind_counts_half_in_a_turn_about_something_else(
    turns: FoldedTurnStore, store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    """A time in a turn that shares no word with "What time ... dentist?" is weaker
    evidence than one in a turn about the dentist: it gets half the kind boost."""
    # two folds, so that neither turn is indexed by the other's words
    turns.add(tenant, "evidence", [FoldedTurn(0, "user", "The show starts at 9:30 pm.")])
    turns.add(tenant, "evidence", [FoldedTurn(1, "user", "Book the dentist for 4:45 pm.")])
    found = {s.index: s for s in turns.recall(tenant, "evidence", "What time is the dentist?")}
    alone, about = found[0], found[1]
    assert math.isclose(alone.score, alone.similarity + turns.value_boost + turns.kind_boost / 2)
    without = FoldedTurnStore(store, embedder=embedder, kind_boost=0.0)
    plain = {
        s.index: s.score for s in without.recall(tenant, "evidence", "What time is the dentist?")
    }
    assert math.isclose(about.score, plain[1] + turns.kind_boost)


def test_a_sentence_holding_a_query_word_as_a_compound_is_kept_in_focus() -> None:
    """Found by review: a turn found through "rentalcars" lost its "rental car" sentence
    when it was cut to the sentences that matter."""
    text_ = "I need a rental car please. The weather was lovely. We talked about songs."
    kept = focused(text_, frozenset({"rentalcar", "citi"}))
    assert "rental car" in kept and "weather" not in kept


def test_a_question_about_movies_finds_the_turn_about_a_movie(store: Store) -> None:
    # "movies" and "movie" meet: the fact's turn shares the query's one content word
    turns = FoldedTurnStore(store, candidates=2)
    thread = "movies-" + uuid.uuid4().hex[:8]
    filler = [
        "Is there a table for 4 at 7:30 on Friday?",
        "I booked the table at Lers Ros Thai for March 1st.",
        "The train to Anaheim leaves at 6:50 am on the 13th.",
        "Your flight to Chicago departs at 5:05 am.",
    ]
    rows = [FoldedTurn(i, "user", t) for i, t in enumerate(filler * 3)]
    rows.append(FoldedTurn(len(rows), "user", "i want a horror movie by ari aster."))
    turns.add("acme", thread, rows)
    found = turns.recall("acme", thread, "Which movies did I ask for?", k=1, token_budget=100)
    assert [s.text for s in found] == ["i want a horror movie by ari aster."]


def test_a_thread_s_phrasing_does_not_decide_which_turn_is_nearest(
    store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    """Once echoes show how this thread asks ("Quick check before we go on: ..."), nearness
    is measured to the query's need (its other content words), not to its phrasing: the
    turn about songs is nearest to a question about music, not the turn worded like it."""
    ask = "Quick check before we go on: what was the {} I gave for the {} request?"
    rows = [
        ask.format("city", "hotels"),
        "You gave Paris.",
        ask.format("date", "flights"),
        "You gave the 5th.",
        ask.format("time", "alarm"),
        "You gave 7 am.",
        "Can you find me some rock songs to listen to?",
        "Before we go on, what was the total I paid for the rooms?",
        "I want to book a table for two at noon.",
    ]
    thread = "need-" + uuid.uuid4().hex[:8]

    def by_similarity(need: bool) -> FoldedTurnStore:
        """Similarity alone decides (no words, identifiers, values or kinds)."""
        zero = {"lexical_weight": 0, "term_boost": 0, "value_boost": 0, "kind_boost": 0}
        return FoldedTurnStore(store, embedder=embedder, need_vector=need, **zero)

    turns = by_similarity(need=True)
    turns.add(tenant, thread, [FoldedTurn(i, "user", t) for i, t in enumerate(rows)])
    found = turns.recall(tenant, thread, ask.format("genre", "music"), k=1, token_budget=100)
    assert [s.index for s in found] == [6]
    # need_vector=False (the default): the whole query decides, the turn worded like it wins
    whole = by_similarity(need=False)
    found = whole.recall(tenant, thread, ask.format("genre", "music"), k=1, token_budget=100)
    assert [s.index for s in found] == [7]
    # without the echoes there is no phrasing to set aside: the whole query decides
    alone = "alone-" + uuid.uuid4().hex[:8]
    turns.add(tenant, alone, [FoldedTurn(i, "user", t) for i, t in enumerate(rows) if i > 5])
    found = turns.recall(tenant, alone, ask.format("genre", "music"), k=1, token_budget=100)
    assert [s.index for s in found] == [7]


def test_a_turn_holding_none_of_the_query_s_words_is_recalled_whole(
    store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    """With the query's need, focus picks a turn's sentences by the query's words; a turn
    found without any (by its meaning or its value) gives it nothing to pick by, and its
    answer may be the sentence without a capital or a number ("... in the living room.")."""
    turns = FoldedTurnStore(store, embedder=embedder, need_vector=True)
    thread = "whole-" + uuid.uuid4().hex[:8]
    target = "I love the Ladykillers! Let's put that song on in the living room."
    rows = [
        "Can you find me a table for 2 at Lers Ros Thai? I am really hungry now.",
        target,
        "Your alarm is set for 7 am. It is called Wake up.",
    ]
    turns.add(tenant, thread, [FoldedTurn(i, "user", t) for i, t in enumerate(rows)])
    found = turns.recall(tenant, thread, "Which device did I pick?", k=3, token_budget=500)
    assert target in [s.text for s in found]
    # a turn holding a word of the query is still focused on the sentences that use it
    found = turns.recall(tenant, thread, "Which table did I want?", k=3, token_budget=500)
    assert "Can you find me a table for 2 at Lers Ros Thai? …" in [s.text for s in found]


def _terms_of(store: Store, tenant: str, thread: str) -> dict[str, list[int]]:
    from sqlalchemy import text

    from graphthrift.history.schema import FOLDED_TERMS_TABLE

    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT term, turns FROM {FOLDED_TERMS_TABLE}"
                " WHERE tenant_id = :tenant AND thread_id = :thread"
            ),
            {"tenant": tenant, "thread": thread},
        ).all()
    return {term: list(turns) for term, turns in rows}


def test_a_thread_rewritten_from_an_index_drops_its_stale_turns_there_and_after(
    store: Store, turns: FoldedTurnStore, tenant: str
) -> None:
    """A batch whose turn differs from the one kept at its index (a thread id used again, a
    run resumed from an earlier checkpoint) replaces the kept turns from there on, in the
    turns and in the posting lists; the turns before it stay, and the same batch again
    changes nothing."""
    before = diagnostics.get("recall_thread_rewritten")
    assert turns.add(tenant, "r", THREAD) == 7
    assert turns.add(tenant, "r", THREAD) == 0  # the same turns again: nothing happens
    assert turns.add(tenant, "r", THREAD[5:]) == 0
    assert diagnostics.get("recall_thread_rewritten") == before
    branch = [THREAD[0], FoldedTurn(1, "assistant", "Which evening suits you, and how many?")]
    assert turns.add(tenant, "r", branch) == 1
    assert diagnostics.get("recall_thread_rewritten") == before + 1
    found = turns.recall(tenant, "r", "order number shipped Denver", k=10, token_budget=10_000)
    assert sorted(s.index for s in found) == [0, 1]
    assert [s.text for s in found] == [THREAD[0].text, branch[1].text]
    postings = _terms_of(store, tenant, "r")
    assert all(index <= 1 for held in postings.values() for index in held)
    assert "a-1042" not in postings and "denver" not in postings  # held only by stale turns
    assert postings["oakland"] == [0]  # turn 0 kept its postings; turn 5 took its own away


def test_a_thread_id_used_again_with_a_fresh_state_recalls_only_the_new_conversation(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """The pruner numbers folded turns by its state, so a conversation that starts over on
    a thread id (its checkpoint lost) writes the indices of the one before: recall must
    bring back the new booking code, never the old one."""
    from graphthrift.history import HistoryPruner

    filler = [
        "Can you recommend a science fiction novel for a long train ride?",
        "What is a good recipe for a vegetarian lasagna with spinach?",
        "How do I repot a fiddle leaf fig without hurting the roots?",
        "Which stretches help after a long day sitting at a desk?",
        "What should I pack for a weekend camping trip in the mountains?",
        "How does a heat pump keep a house warm in the winter?",
    ]

    def converse(code: str) -> str:
        pruner = HistoryPruner(max_tokens=200, recall=turns)
        chat = [f"My booking code is {code}, please remember it.", *filler]
        chat.append("Remind me, what booking code did I give you at the start?")
        history: list[dict[str, str]] = []
        state = None
        for text in chat:
            history.append({"role": "user", "content": text})
            result = pruner.prune(history, state, tenant=tenant, thread="member-7")
            state = result.state
            history.append({"role": "assistant", "content": "Noted, happy to help with that."})
        assert result.recall_message is not None
        return result.recall_message.text

    assert "QX-1111" in converse("QX-1111")
    again = converse("ZZ-2222")
    assert "ZZ-2222" in again
    assert "QX-1111" not in again


async def test_a_rewrite_is_kept_by_the_async_twin_too(turns: FoldedTurnStore, tenant: str) -> None:
    assert await turns.aadd(tenant, "ra", THREAD) == 7
    branch = [FoldedTurn(0, "user", "I need a hotel in Denver for two nights.")]
    assert await turns.aadd(tenant, "ra", branch) == 1
    found = await turns.arecall(tenant, "ra", "hotel Denver order", k=10, token_budget=10_000)
    assert [(s.index, s.text) for s in found] == [(0, branch[0].text)]


def test_a_batch_from_an_earlier_index_drops_the_turns_after_it(
    turns: FoldedTurnStore, tenant: str
) -> None:
    """The pruner folds in order from its state's count, so a batch that starts before the
    kept turns end comes from a state that went back (a run resumed from an earlier
    checkpoint): the turns after the batch are not this conversation's yet, even where they
    read the same, and are not recalled until it folds them again."""
    assert turns.add(tenant, "p", THREAD) == 7
    assert turns.add(tenant, "p", THREAD[:2]) == 0
    found = turns.recall(tenant, "p", "order number shipped Denver", k=10, token_budget=10_000)
    assert sorted(s.index for s in found) == [0, 1]
    assert turns.add(tenant, "p", THREAD[2:]) == 5  # folded again: kept again


def test_a_writer_of_a_thread_waits_for_the_one_before_and_reads_what_it_wrote(
    store: Store, turns: FoldedTurnStore, tenant: str
) -> None:
    """Writers of one thread take its lock first: a batch written while another writer of
    the thread is still in its transaction is checked against what that one commits, so a
    rewrite replaces it rather than mix two conversations in one thread."""
    import threading

    from sqlalchemy import text

    from graphthrift.history.recall import _INSERT, _THREAD_LOCK

    assert turns.add(tenant, "w", [THREAD[0]]) == 1
    first = FoldedTurn(1, "assistant", "Which evening suits you, and how many?")
    params = turns._insert_params(tenant, "w", [first], turns.embedder.embed([first.text]))
    locked, done = threading.Event(), threading.Event()

    def slow_writer() -> None:  # the thread's lock, then its batch, committed 0.5 s later
        with store.engine.begin() as conn:
            conn.execute(text(_THREAD_LOCK), params)
            locked.set()
            conn.execute(text(_INSERT), params)
            time.sleep(0.5)
        done.set()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert locked.wait(10)
    rewrite = [THREAD[0], FoldedTurn(1, "assistant", "Sure, which day would you like?")]
    assert turns.add(tenant, "w", rewrite) == 1  # waited, saw turn 1, replaced it
    assert done.is_set()
    writer.join()
    found = turns.recall(tenant, "w", "which day evening", k=10, token_budget=10_000)
    assert [(s.index, s.text) for s in found] == [(0, THREAD[0].text), (1, rewrite[1].text)]
