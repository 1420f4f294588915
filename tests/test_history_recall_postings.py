"""Recall's two reads (posting lists, then the chosen turns' texts) against the one-read
reference, and the posting lists kept right through writes, forgets and migration 51."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import Engine, create_engine, event, text

from cache_helpers import scratch_database
from graphthrift.bench._data import read_set_file
from graphthrift.embed.embedders import Vectors
from graphthrift.embed.static import StaticEmbedder
from graphthrift.history.recall import (
    _INSERT,
    QUERY_CACHE_SIZE,
    FoldedTurn,
    FoldedTurnStore,
    RecalledSnippet,
    _embedded,
)
from graphthrift.history.schema import FOLDED_TERMS_TABLE, FOLDED_TURNS_TABLE
from graphthrift.store.migrations import MIGRATIONS
from graphthrift.store.postgres import Store, apply_migrations
from recall_one_read import one_read_recall


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder()


def _sgd_turns(count: int, offset: int = 0) -> list[FoldedTurn]:
    """``count`` SGD test utterances (the data shipped in the repo) as turns, each with
    words of its own: two turns with the same words (in any order) embed alike, and the
    one-read reference ordered such ties as the database returned them."""
    found: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for line in read_set_file("sgd_test", "sgd_test_compact.jsonl").splitlines():
        for turn in json.loads(line)["turns"] if line.strip() else []:
            words = tuple(sorted(re.findall(r"\w+", turn["utterance"].lower())))
            if words not in seen:
                seen.add(words)
                found.append(turn["utterance"])
        if len(found) >= offset + count:
            break
    return [
        FoldedTurn(i, "user" if i % 2 == 0 else "assistant", s)
        for i, s in enumerate(found[offset : offset + count])
    ]


# Questions in the long set's phrasing, asked after turns phrased the same way: echoes,
# phrasing words, and a phrasing word the query uses more often than its echoes do.
QUESTIONS = [
    FoldedTurn(300 + k, "user", f"Quick check before we go on: what was the {slot} I gave?")
    for k, slot in enumerate(["check out date", "city", "return date", "number of seats"])
]

QUERIES = [
    "Quick check before we go on: what was the check out date I gave for the hotels request?",
    "Which restaurant did I book, and for what time?",
    "What was the phone number of the dentist?",
    "Find me a flight to New York on March 3rd for 2 people.",
    "Is the 7:30 pm show at the Castro Theatre still on?",
    "thanks",
]


def _chosen(found: list[RecalledSnippet]) -> list[tuple[object, ...]]:
    """What a recall returned, scores to 9 places (summed in another order)."""
    return [
        (
            s.index,
            s.role,
            s.text,
            s.tokens,
            round(s.similarity, 9),
            s.matched_terms,
            round(s.score, 9),
        )
        for s in found
    ]


def _postings(store: Store, tenant: str, thread: str) -> dict[str, list[int]]:
    with store.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT term, turns FROM {FOLDED_TERMS_TABLE}"
                " WHERE tenant_id = :t AND thread_id = :th"
            ),
            {"t": tenant, "th": thread},
        )
        return {r[0]: sorted(r[1]) for r in rows}


def _inverted(store: Store, tenant: str, thread: str) -> dict[str, list[int]]:
    """The posting lists the stored turns' own terms make."""
    out: dict[str, list[int]] = {}
    with store.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT turn_index, terms FROM {FOLDED_TURNS_TABLE}"
                " WHERE tenant_id = :t AND thread_id = :th"
            ),
            {"t": tenant, "th": thread},
        )
        for index, terms in rows:
            for term in terms:
                out.setdefault(term, []).append(index)
    return {t: sorted(v) for t, v in out.items()}


def _own_terms(store: Store, tenant: str, thread: str) -> dict[int, tuple[int, int]]:
    """Per turn: its ``own_terms`` and the count of its '~' terms."""
    with store.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT turn_index, own_terms, terms FROM {FOLDED_TURNS_TABLE}"
                " WHERE tenant_id = :t AND thread_id = :th"
            ),
            {"t": tenant, "th": thread},
        )
        return {r[0]: (r[1], sum(1 for t in r[2] if t.startswith("~"))) for r in rows}


@pytest.mark.parametrize("focus", [True, False])
def test_two_reads_choose_the_same_turns_and_texts_as_one_read(
    store: Store, embedder: StaticEmbedder, tenant: str, focus: bool
) -> None:
    """On a fixed thread (300 SGD turns in folds of 7, and questions in one phrasing), every
    query recalls the same turns, texts, token counts and scores as the one-read reference,
    with identifiers, echoes, phrasing, budgets that skip turns and ``k`` past the thread's
    candidates."""
    turns = FoldedTurnStore(store, embedder=embedder, focus=focus)
    chat = [*_sgd_turns(300), *QUESTIONS]
    for start in range(0, len(chat), 7):
        turns.add(tenant, "fixed", chat[start : start + 7])
    rng = random.Random(16)
    queries = [*QUERIES, *(rng.choice(chat).text for _ in range(12))]
    compared = 0
    for query in queries:
        for k, budget in [(10, 512), (4, 60), (40, 2000)]:
            got = turns.recall(tenant, "fixed", query, k=k, token_budget=budget)
            want = one_read_recall(turns, tenant, "fixed", query, k=k, token_budget=budget)
            assert _chosen(got) == _chosen(want), (query, k, budget)
            compared += bool(want)
    assert compared >= len(queries) * 2  # the comparison is not of empty results


def test_posting_lists_follow_every_write_and_forget(
    store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    turns = FoldedTurnStore(store, embedder=embedder)
    chat = _sgd_turns(60)
    assert turns.add(tenant, "a", chat[:25]) == 25
    # overlapping folds: turns 20-24 are kept already and must not be listed twice
    assert turns.add(tenant, "a", chat[20:45]) == 20
    assert turns.add(tenant, "a", chat[40:60]) == 15
    assert turns.add(tenant, "b", chat[:10]) == 10
    assert turns.add(tenant, "a", [FoldedTurn(60, "user", "")]) == 1  # no terms at all
    listed = _postings(store, tenant, "a")
    assert listed == _inverted(store, tenant, "a")
    assert all(len(v) == len(set(v)) for v in listed.values())
    assert {i for v in listed.values() for i in v} == set(range(60))
    assert all(own == counted for own, counted in _own_terms(store, tenant, "a").values())
    assert _postings(store, tenant, "b") == _inverted(store, tenant, "b") != {}
    # the async writer keeps them the same way
    more = [FoldedTurn(61 + t.index, t.role, t.text) for t in _sgd_turns(5, offset=60)]
    assert asyncio.run(turns.aadd(tenant, "a", more)) == 5
    assert asyncio.run(turns.aadd(tenant, "a", more)) == 0
    assert _postings(store, tenant, "a") == _inverted(store, tenant, "a")
    # forgetting a thread takes its posting lists with it, and only its own
    assert turns.forget(tenant, "a") == 66
    assert _postings(store, tenant, "a") == {} == _inverted(store, tenant, "a")
    assert _postings(store, tenant, "b") == _inverted(store, tenant, "b") != {}
    assert turns.recall(tenant, "a", chat[3].text, k=4) == []
    # a thread written again after it was forgotten starts from nothing
    assert turns.add(tenant, "a", chat[:5]) == 5
    assert _postings(store, tenant, "a") == _inverted(store, tenant, "a")
    assert {i for v in _postings(store, tenant, "a").values() for i in v} == set(range(5))


@pytest.fixture
def old_database(store: Store) -> Iterator[Engine]:
    """A database migrated up to 50 only (a ``Store`` would migrate it on open): folded
    turns as the one-read recall kept them."""
    with scratch_database(store.url) as (url, _):
        engine = create_engine(url)
        with engine.begin() as conn:
            apply_migrations(conn, [m for m in MIGRATIONS if m.version <= 50])
        yield engine
        engine.dispose()


# The one-read recall's insert (before migration 51): no own_terms, no posting lists.
_OLD_INSERT = (
    f"INSERT INTO {FOLDED_TURNS_TABLE}"
    " (tenant_id, thread_id, turn_index, role, content, tokens, terms, embedding_model, dim,"
    " embedding)"
    " SELECT :tenant, :thread, u.i, u.r, u.c, u.t, string_to_array(u.w, ' '), :model, :dim,"
    " CAST(u.e AS vector)"
    " FROM unnest(CAST(:idx AS integer[]), CAST(:roles AS text[]), CAST(:texts AS text[]),"
    " CAST(:tokens AS integer[]), CAST(:words AS text[]), CAST(:vectors AS text[]))"
    " AS u(i, r, c, t, w, e)"
    " ON CONFLICT (tenant_id, thread_id, embedding_model, turn_index) DO NOTHING"
)


def test_migration_51_backfills_posting_lists_and_own_counts(
    old_database: Engine, store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    """Turns kept before migration 51 get their posting lists and own counts, and recall
    over them answers as the one-read recall did."""
    writer = FoldedTurnStore(store, embedder=embedder)  # for its insert parameters only
    chat = [*_sgd_turns(120), *QUESTIONS]
    with old_database.begin() as conn:
        for thread, rows in (("x", chat), ("y", chat[:40])):
            vectors = embedder.embed([t.text for t in rows])
            conn.execute(text(_OLD_INSERT), writer._insert_params(tenant, thread, rows, vectors))
    db = Store(old_database.url.render_as_string(hide_password=False), home=store.home)
    try:
        with db.connect() as conn:
            versions = {
                r[0] for r in conn.execute(text("SELECT version FROM graphthrift_migrations"))
            }
        assert 51 in versions  # applied on open
        for thread in ("x", "y"):
            assert _postings(db, tenant, thread) == _inverted(db, tenant, thread) != {}
            owns = _own_terms(db, tenant, thread)
            assert all(own == counted for own, counted in owns.values())
            assert sum(own for own, _ in owns.values()) > len(owns)
        turns = FoldedTurnStore(db, embedder=embedder)
        for query in QUERIES:
            got = turns.recall(tenant, "x", query, k=10, token_budget=512)
            want = one_read_recall(turns, tenant, "x", query, k=10, token_budget=512)
            assert _chosen(got) == _chosen(want), query
        assert turns.recall(tenant, "x", QUESTIONS[0].text, k=10) != []
    finally:
        db.close()


@pytest.mark.parametrize("need", [False, True])
def test_recall_reads_no_text_but_the_chosen_turns(
    store: Store, embedder: StaticEmbedder, tenant: str, need: bool
) -> None:
    """The first read returns no turn's terms or text; texts are read for at most ``2 * k``
    turns at a time, or with ``need_vector`` in the need's read, for the turns likely to
    rank first; a query whose phrasing words each echo holds once reads no echo's text.
    Each statement is scoped to the tenant and the thread."""
    turns = FoldedTurnStore(store, embedder=embedder, need_vector=need)
    turns.add(tenant, "narrow", [*_sgd_turns(200), *QUESTIONS])
    seen: list[tuple[str, dict[str, object]]] = []

    def record(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        seen.append((statement, dict(params)))  # type: ignore[call-overload]

    engine = turns._engines.read_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        query = "Quick check before we go on: what was the city I gave?"
        found = turns.recall(tenant, "narrow", query, k=3, token_budget=400)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert found
    reads = [(sql, p) for sql, p in seen if sql.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) == 2, [sql[:60] for sql, _ in reads]
    first, second = reads
    # neither the text nor the term list of any turn (the query's terms are a parameter)
    assert "content" not in first[0] and re.search(r"\bterms\b(?!\)s)", first[0]) is None
    assert "content" in second[0] and re.search(r"\bterms\b(?!\)s)", second[0]) is None
    if need:  # the thread asks in one phrasing: the need's 2k nearest and the candidates
        assert second[1]["m"] == 2 * 3
        assert len(second[1]["idx"]) <= 2 * turns.candidates  # type: ignore[arg-type]
    else:
        assert len(second[1]["idx"]) <= 2 * 3  # type: ignore[arg-type]
        assert {s.index for s in found} <= set(second[1]["idx"])  # type: ignore[call-overload]
    for sql, p in reads:
        assert "tenant_id = " in sql and "thread_id = " in sql
        assert (p["tenant"], p["thread"]) == (tenant, "narrow")


# A turn long enough (its text and terms) that its row passes PostgreSQL's 2 kB toast
# threshold together with a 384-dimension embedding (1.5 kB).
_LONG = FoldedTurn(
    0,
    "assistant",
    " ".join(
        f"Option {n}: the {w} at {100 + n} Main Street, code Q{n * 7}."
        for n, w in enumerate(
            [
                "hotel",
                "salon",
                "dentist",
                "theatre",
                "restaurant",
                "garage",
                "bakery",
                "museum",
                "library",
                "station",
                "airport",
                "clinic",
            ]
        )
    ),
)


def _embedding_out_of_line(conn: object, tenant: str, thread: str) -> dict[int, bool]:
    """Per turn: whether its embedding is stored out of line (in the TOAST table)."""
    rows = conn.execute(  # type: ignore[attr-defined]
        text(
            f"SELECT turn_index, pg_column_toast_chunk_id(embedding) IS NOT NULL"
            f" FROM {FOLDED_TURNS_TABLE} WHERE tenant_id = :t AND thread_id = :th"
        ),
        {"t": tenant, "th": thread},
    )
    return {int(r[0]): bool(r[1]) for r in rows}


@pytest.fixture
def database_at_51(store: Store) -> Iterator[Engine]:
    """A database migrated up to 51 only: embeddings in pgvector's own (external) storage."""
    with scratch_database(store.url) as (url, _):
        engine = create_engine(url)
        with engine.begin() as conn:
            if conn.execute(text("SHOW server_version_num")).scalar_one() < "170000":
                pytest.skip("pg_column_toast_chunk_id needs PostgreSQL 17")
            apply_migrations(conn, [m for m in MIGRATIONS if m.version <= 51])
        yield engine
        engine.dispose()


def test_migration_52_keeps_new_embeddings_in_the_row(
    database_at_51: Engine, store: Store, embedder: StaticEmbedder, tenant: str
) -> None:
    """Before migration 52 a row over the 2 kB toast threshold had its embedding moved out
    of line (a TOAST fetch for every distance recall computes); after it, new rows keep the
    embedding in the row (their text or terms are compressed or go out of line instead).
    Rows written before keep working."""
    writer = FoldedTurnStore(store, embedder=embedder)  # for its insert parameters only
    vectors = embedder.embed([_LONG.text])
    with database_at_51.begin() as conn:
        conn.execute(text(_INSERT), writer._insert_params(tenant, "old", [_LONG], vectors))
        assert _embedding_out_of_line(conn, tenant, "old") == {0: True}
    db = Store(database_at_51.url.render_as_string(hide_password=False), home=store.home)
    try:
        with db.connect() as conn:
            storage = conn.execute(
                text(
                    "SELECT attstorage FROM pg_attribute WHERE attname = 'embedding'"
                    f" AND attrelid = '{FOLDED_TURNS_TABLE}'::regclass"
                )
            ).scalar_one()
        assert storage == "m"
        turns = FoldedTurnStore(db, embedder=embedder)
        assert turns.add(tenant, "new", [_LONG]) == 1
        with db.connect() as conn:
            assert _embedding_out_of_line(conn, tenant, "new") == {0: False}
            assert _embedding_out_of_line(conn, tenant, "old") == {0: True}
        for thread in ("old", "new"):
            found = turns.recall(tenant, thread, "Which dentist was at 103 Main Street?", k=2)
            assert [s.text for s in found] == [_LONG.text]
            assert found[0].similarity > 0.2
    finally:
        db.close()


class _CountingEmbedder(StaticEmbedder):
    """The static embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts.extend(texts)
        return super().embed(texts)

    async def aembed(self, texts: Sequence[str]) -> Vectors:
        self.texts.extend(texts)
        return await super().aembed(texts)


@pytest.mark.parametrize("need", [False, True])
def test_a_query_recalled_again_is_not_embedded_again(
    store: Store, tenant: str, need: bool
) -> None:
    """An agent calls its model several times for one user message (tool calls), and each
    prune recalls that message: its vector and terms are kept (for the last
    ``QUERY_CACHE_SIZE`` queries), and each recall still reads its own thread."""
    embedder = _CountingEmbedder()
    turns = FoldedTurnStore(store, embedder=embedder, need_vector=need)
    chat = _sgd_turns(80)
    turns.add(tenant, "a", chat[:40])
    turns.add(tenant, "b", chat[40:])
    query = QUERIES[1]
    first = turns.recall(tenant, "a", query, k=4, token_budget=300)
    embedder.texts.clear()
    assert _chosen(turns.recall(tenant, "a", query, k=4, token_budget=300)) == _chosen(first)
    other = asyncio.run(turns.arecall(tenant, "b", query, k=4, token_budget=300))
    assert embedder.texts == []
    assert first and other
    assert {s.index for s in first} <= set(range(40))
    assert {s.index for s in other} <= set(range(40, 80))
    fresh = FoldedTurnStore(store, embedder=StaticEmbedder(), need_vector=need)
    assert _chosen(fresh.recall(tenant, "b", query, k=4, token_budget=300)) == _chosen(other)
    # a new query is embedded (with need_vector, with its content words in the same call:
    # the query's need); the oldest ones leave the cache
    asked = [f"{query} ({n})" for n in range(QUERY_CACHE_SIZE + 1)]
    for text_ in asked:
        turns.recall(tenant, "a", text_, k=1, token_budget=100)
    assert embedder.texts == [t for q in asked for t in _embedded(q, need)]
    assert _embedded(query, need)[0] == query and (len(_embedded(query, need)) > 1) == need
    embedder.texts.clear()
    turns.recall(tenant, "a", query, k=4, token_budget=300)
    turns.recall(tenant, "a", asked[-1], k=4, token_budget=300)
    assert embedder.texts == _embedded(query, need)
